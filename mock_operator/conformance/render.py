"""A report as JSON (tools), JUnit XML (a vendor's CI) or HTML in French (people)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from xml.etree import ElementTree as ET  # writing only: nothing is parsed here

from mock_operator.conformance.results import Report, Status
from mock_operator.web import templates

FORMATS = ("html", "junit", "json")


def render(report: Report, format: str) -> str:
    if format == "json":
        return to_json(report)
    if format == "junit":
        return to_junit(report)
    if format == "html":
        return to_html(report)
    raise ValueError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")


def as_dict(report: Report) -> dict[str, Any]:
    return {
        "kind": report.kind,
        "title": report.title,
        "subject": dict(report.subject),
        "started": _iso(report.started),
        "finished": _iso(report.finished),
        "summary": {status.value: report.count(status) for status in Status},
        "results": [
            {
                "id": result.check.key,
                "requirement": result.check.requirement,
                "title": result.check.title,
                "area": result.check.area,
                "status": result.status.value,
                "detail": result.detail,
                "evidence": list(result.evidence),
            }
            for result in report.results
        ],
    }


def to_json(report: Report) -> str:
    return json.dumps(as_dict(report), ensure_ascii=False, indent=2) + "\n"


def to_junit(report: Report) -> str:
    """One `testcase` per check: `<failure>` when it failed, `<skipped>` when it was not
    observed; the evidence in `system-out`, as JUnit consumers (GitLab, Jenkins) show it."""
    suites = ET.Element("testsuites", name=report.title)
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=report.title,
        tests=str(len(report.results)),
        failures=str(report.count(Status.FAILED)),
        errors="0",
        skipped=str(report.count(Status.NOT_OBSERVED)),
        timestamp=report.started.replace(microsecond=0, tzinfo=None).isoformat(),
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in report.subject.items():
        ET.SubElement(properties, "property", name=name, value=_xml_text(value))
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"{report.kind}.{result.check.area}",
            name=f"{result.check.requirement} {result.check.key}: {result.check.title}",
        )
        if result.status is Status.FAILED:
            message = _xml_text(result.detail)
            failure = ET.SubElement(case, "failure", message=message, type="failed")
            failure.text = _xml_text("\n".join(result.evidence))
        elif result.status is Status.NOT_OBSERVED:
            ET.SubElement(case, "skipped", message=_xml_text(result.detail or "non observé"))
        if result.evidence:
            ET.SubElement(case, "system-out").text = _xml_text("\n".join(result.evidence))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def to_html(report: Report) -> str:
    return templates.get_template("conformance_report.html").render(
        report=report, Status=Status, when=_when
    )


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def _when(moment: dt.datetime | None) -> str:
    return moment.astimezone().strftime("%d/%m/%Y %H:%M:%S") if moment else "—"


def _xml_text(text: str) -> str:
    """XML 1.0 cannot carry most control characters, even escaped."""
    return "".join(c if c in "\t\n\r" or c >= " " else f"\\x{ord(c):02x}" for c in text)
