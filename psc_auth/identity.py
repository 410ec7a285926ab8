"""`Identity`: who is calling, as established from a validated Pro Santé Connect token."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from psc_auth.errors import IdNatError, TokenError, TokenFailure
from psc_auth.idnat import IdNat

PROFESSION_LABELS: Mapping[str, str] = {
    "10": "médecin",
    "21": "pharmacien",
    "40": "chirurgien-dentiste",
    "50": "sage-femme",
    "60": "infirmier",
    "70": "masseur-kinésithérapeute",
}

MAX_EXERCICES = 32  # bound on what we read from SubjectRefPro


class AuthMeans(enum.Enum):
    """How the person authenticated to PSC: the physical CPS card or the e-CPS phone app."""

    CARD = "card"
    ECPS = "e-cps"
    UNKNOWN = "unknown"

    @classmethod
    def from_amr(cls, amr: object) -> AuthMeans:
        """Map RFC 8176 `amr` values: `sc`/`hwk` is the card, `swk`/`mca` the e-CPS app.

        PSC gives `acr=eidas1` for both means, so `amr` is the only hint (*inferred*).
        """
        items = [amr] if isinstance(amr, str) else amr if isinstance(amr, list) else []
        values = {value for value in items if isinstance(value, str)}
        if values & {"sc", "hwk", "CARD"}:
            return cls.CARD
        if values & {"swk", "mca", "MOBILE"}:
            return cls.ECPS
        return cls.UNKNOWN


@dataclass(frozen=True, slots=True)
class Profession:
    """One practice (`exercice`) of the person from `SubjectRefPro`."""

    code: str
    category: str = ""
    savoir_faire: str = ""

    @property
    def label(self) -> str:
        return PROFESSION_LABELS.get(self.code, self.code)


@dataclass(frozen=True, slots=True)
class Identity:
    """A person authenticated by PSC. Built only by `psc_auth`; protocol code just reads it."""

    idnat: IdNat
    subject: str
    given_name: str
    family_name: str
    professions: tuple[Profession, ...]
    auth_means: AuthMeans
    expires_at: dt.datetime
    token_id: str
    client_id: str
    claims: Mapping[str, Any] = field(repr=False, compare=False, hash=False)

    @property
    def psc_session(self) -> str | None:
        """The PSC (Keycloak) session the token was issued in, `sid` or `session_state`:
        every token of one login shares it, until that PSC session ends."""
        for name in ("sid", "session_state"):
            value = self.claims.get(name)
            if isinstance(value, str) and value:
                return value[:128]
        return None

    @property
    def display_name(self) -> str:
        return f"{self.given_name} {self.family_name}".strip() or str(self.idnat)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], *, token_id: str) -> Identity:
        """Build the identity from token or introspection claims (plus userinfo when merged)."""
        raw_idnat = claims.get("SubjectNameID") or claims.get("preferred_username")
        if not isinstance(raw_idnat, str):
            raise TokenError(TokenFailure.MALFORMED, "no SubjectNameID nor preferred_username")
        try:
            idnat = IdNat.parse(raw_idnat)
        except IdNatError as exc:
            raise TokenError(TokenFailure.MALFORMED, f"bad national identifier: {exc}") from None
        exp = claims.get("exp")
        if type(exp) is not int and type(exp) is not float:  # JSON's numbers, not a bool
            raise TokenError(TokenFailure.MALFORMED, "no numeric exp claim")
        try:
            expires_at = dt.datetime.fromtimestamp(exp, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise TokenError(TokenFailure.MALFORMED, "exp is not a time") from None
        azp = claims.get("azp") or claims.get("client_id") or ""
        return cls(
            idnat=idnat,
            subject=_text(claims.get("sub")),
            given_name=_text(claims.get("given_name")),
            family_name=_text(claims.get("family_name")),
            professions=_professions(claims.get("SubjectRefPro")),
            auth_means=AuthMeans.from_amr(claims.get("amr")),
            expires_at=expires_at,
            token_id=token_id,
            client_id=_text(azp),
            claims=dict(claims),
        )


def _text(value: object, limit: int = 256) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _professions(ref_pro: object) -> tuple[Profession, ...]:
    if not isinstance(ref_pro, Mapping):
        return ()
    exercices = ref_pro.get("exercices")
    if not isinstance(exercices, list):
        return ()
    found: list[Profession] = []
    for exercice in exercices[:MAX_EXERCICES]:
        if isinstance(exercice, Mapping) and isinstance(exercice.get("codeProfession"), str):
            profession = Profession(
                code=_text(exercice["codeProfession"], 8),
                category=_text(exercice.get("codeCategorieProfessionnelle"), 8),
                savoir_faire=_text(exercice.get("codeSavoirFaire"), 16),
            )
            if profession not in found:
                found.append(profession)
    return tuple(found)
