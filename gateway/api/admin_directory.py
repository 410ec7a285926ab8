"""`/admin/directory`: the operator's directory file posted by an administrator, imported
(or, with `dry_run`, only compared) as `lps-gateway directory import` does, with the same
report as JSON. The file comes as the raw body (``text/csv`` or ``application/json``) or
as the ``file`` field of a ``multipart/form-data`` form; its size is capped by
`[admin] directory_max_body` before a byte is parsed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from gateway.api import problems
from gateway.api.admin import Admin, DirectoryImports
from gateway.api.deps import Service
from gateway.directory_import.apply import import_directory
from gateway.directory_import.json_schema import DirectoryIn
from gateway.directory_import.parse import Format, Limits

router = APIRouter(prefix="/admin", tags=["admin"])

_TYPES: dict[str, Format] = {
    "text/csv": "csv",
    "text/plain": "csv",
    "application/json": "json",
}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` inlined, to sit inside the OpenAPI document."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


_CSV_DOC = (
    "The Annuaire Santé's MSSanté extraction: a header line, then one line per BAL, fields "
    "separated by `|` (also `;`, `,`, tab); columns by name (README, 'Loading the operator's "
    "directory'), plus the optional `backend` and `delegations` columns."
)
_REPORT_EXAMPLE = {
    "dry_run": False,
    "refused": False,
    "written": True,
    "added": [{"kind": "bal", "key": "eve.moreau@medecin.mssante.fr", "detail": "PER on modern"}],
    "changed": [],
    "would_remove": [],
    "errors": [],
    "skipped": [],
    "warnings": [],
}


def _imports(config: Any) -> DirectoryImports:
    if config.directory is None:
        raise HTTPException(404, "no directory import on this listener")
    imports: DirectoryImports = config.directory
    return imports


async def _file(request: Request, imports: DirectoryImports) -> tuple[bytes, Format | None]:
    """The posted file's bytes, and its format when its type or name says it."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "a `file` field with the directory file is expected")
            data = await upload.read(imports.max_body + 1)
            name = (upload.filename or "").lower()
            inner = (upload.content_type or "").split(";")[0].strip().lower()
        found = "json" if name.endswith(".json") else _TYPES.get(inner)
        return data, found or ("csv" if name.endswith((".csv", ".txt")) else None)
    if kind not in _TYPES:
        raise HTTPException(415, "post text/csv, application/json or a multipart form")
    return await request.body(), _TYPES[kind]


@router.post(
    "/directory",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string", "description": _CSV_DOC}},
                "application/json": {"schema": _inlined(DirectoryIn.model_json_schema())},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    },
    responses={
        200: {
            "description": "the import's report (written unless `dry_run`)",
            "content": {"application/json": {"example": _REPORT_EXAMPLE}},
        },
        413: {"description": "larger than `[admin] directory_max_body`"},
        415: {"description": "neither CSV, JSON nor a multipart form"},
        422: {"description": "the file was refused: nothing written (problem+json, `errors`)"},
    },
)
async def directory_import(
    call: Admin,
    request: Request,
    service: Service,
    dry_run: Annotated[bool, Query(description="compare and report, write nothing")] = False,
    prune: Annotated[bool, Query(description="remove what the file no longer lists")] = False,
    skip_invalid: Annotated[
        bool, Query(description="import the good lines, list the bad ones")
    ] = False,
    format: Annotated[
        Literal["csv", "json"] | None, Query(description="default: by the content type")
    ] = None,
) -> JSONResponse:
    """Import the operator's directory (people, BAL, backends, delegations) in one
    transaction, as `lps-gateway directory import` does: idempotent, nothing removed
    without `prune`, nothing written from a file with refused lines unless `skip_invalid`."""
    imports = _imports(call.config)
    data, found = await _file(request, imports)
    chosen = format or found
    if chosen is None:
        raise HTTPException(415, "say the file's format: ?format=csv or ?format=json")
    report = await import_directory(
        service,
        data,
        chosen,
        backends=imports.backends,
        actor=call.actor,
        remote=request.client.host if request.client else None,
        dry_run=dry_run,
        prune=prune,
        skip_invalid=skip_invalid,
        limits=Limits(max_bytes=imports.max_body),
    )
    if report.refused:
        return problems.problem(
            422,
            "Unprocessable Content",
            "the directory file was refused: nothing was imported",
            kind="directory-refused",
            **report.as_json(),
        )
    return JSONResponse(report.as_json())
