"""The runner's own moves: the test messages put in a BAL at its first login in a campaign,
and the campaign's report built from what was observed."""

from __future__ import annotations

import datetime as dt
import logging
import time

from mock_operator.conformance.checks import evaluate
from mock_operator.conformance.events import Event
from mock_operator.conformance.observatory import Observatory
from mock_operator.conformance.results import Report
from mock_operator.conformance.samples import samples
from mock_operator.conformance.store import Campaign
from mock_operator.modern.store import SqlPlatform
from mock_operator.personas import Persona, PersonaBook

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, observatory: Observatory, platform: SqlPlatform, personas: PersonaBook):
        self.observatory = observatory
        self.platform = platform
        self.personas = personas
        observatory.on_first_login = self.deliver

    async def deliver(self, campaign: Campaign, bal: str) -> None:
        """Put the test messages in `bal`'s INBOX, sent by another BAL of the platform (so
        that a read receipt or a reply to them can be delivered)."""
        if not await self.platform.has_mailbox(bal):
            return
        sender = next(
            (p for p in correspondents(self.personas) if (p.bal or "").lower() != bal), None
        )
        if sender is None or sender.bal is None:
            return
        domain = bal.rpartition("@")[2]
        now = dt.datetime.now(dt.UTC)
        for sample in samples(bal, sender.bal.lower(), sender.display_name, domain, now):
            uid = await self.platform.deliver(bal, sample.raw, internal_date=now)
            self.observatory.runner(
                campaign,
                "delivered",
                kind=sample.kind,
                bal=bal,
                uid=uid,
                message_id=sample.message_id,
                subject=sample.subject,
                size=len(sample.raw),
            )
        log.info("conformance.delivered", extra={"campaign": campaign.id, "bal": bal})

    async def report(self, campaign: Campaign) -> Report:
        events = await self.observatory.events(campaign.id)
        return campaign_report(campaign, events, self.personas)


CORRESPONDENT = "dr-moreau"  # who writes the test messages, and whom the LPS writes to


def correspondents(personas: PersonaBook) -> list[Persona]:
    """The personas with a BAL on the modern platform, the runner's correspondent first."""
    found = [p for p in personas if p.platform == "modern" and p.bal]
    return sorted(found, key=lambda p: p.key != CORRESPONDENT)


def campaign_report(campaign: Campaign, events: list[Event], personas: PersonaBook) -> Report:
    own = {p.idnat: (p.bal or "").lower() for p in personas}
    last = max((e.at for e in events), default=campaign.created)
    subject = {"Logiciel": campaign.software, "Version": campaign.version or "—"}
    if campaign.client_id:
        subject["client_id"] = campaign.client_id
    if campaign.personas:
        subject["Personas"] = ", ".join(campaign.personas)
    subject["Campagne"] = campaign.id
    return Report(
        kind="campaign",
        title=f"Campagne de conformité — {campaign.software} {campaign.version}".strip(),
        subject=subject,
        started=campaign.started,
        finished=dt.datetime.fromtimestamp(campaign.closed or last, dt.UTC),
        results=evaluate(events, own, now=campaign.closed or time.time()),
    )
