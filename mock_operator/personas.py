"""The seeded personas (a data file shipped in the package) and the PSC claims they produce."""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from psc_auth.identity import PROFESSION_LABELS
from psc_auth.idnat import IdNat

_SUBJECT_NAMESPACE = uuid.UUID("5b0e7c53-2f8e-4d43-9a55-4d6c3e8f0a11")
Platform = Literal["modern", "historic"]


@dataclass(frozen=True)
class PersonaDelegation:
    mailbox: str
    rights: tuple[str, ...]
    expires_in_days: int | None = None


@dataclass(frozen=True)
class Persona:
    key: str
    given_name: str
    family_name: str
    civility: str
    idnat: str
    city: str
    profession: str | None = None
    role: str | None = None
    ecps_only: bool = False
    bal: str | None = None
    platform: Platform | None = None
    delegations: tuple[PersonaDelegation, ...] = field(default=())

    @property
    def subject(self) -> str:
        """PSC's `sub`: a technical UUID, stable per person, deliberately not the RPPS."""
        return str(uuid.uuid5(_SUBJECT_NAMESPACE, self.idnat))

    @property
    def display_name(self) -> str:
        return f"{self.given_name} {self.family_name}"

    @property
    def description(self) -> str:
        if self.role:
            return self.role
        return PROFESSION_LABELS.get(self.profession or "", "personnel")

    def identity_claims(self) -> dict[str, Any]:
        """Claims every token of this persona carries."""
        return {
            "SubjectNameID": self.idnat,
            "preferred_username": self.idnat,
            "given_name": self.given_name,
            "family_name": self.family_name,
        }

    def userinfo_claims(self) -> dict[str, Any]:
        """Userinfo and ID-token claims in the shape of PSC's (DOMAIN.md §3)."""
        exercices = []
        if self.profession:
            exercices.append(
                {
                    "codeProfession": self.profession,
                    "codeCategorieProfessionnelle": "C",
                    "codeCiviliteDexercice": "DR" if self.profession == "10" else "",
                    "nomDexercice": self.family_name,
                    "prenomDexercice": self.given_name,
                    "codeSavoirFaire": "SM54" if self.profession == "10" else "",
                    "codeTypeSavoirFaire": "S" if self.profession == "10" else "",
                    "activities": [
                        {
                            "codeModeExercice": "L",
                            "codeSecteurDactivite": "SA07",
                            "codeSectionPharmacien": "",
                            "codeRole": "FON-01",
                            "numeroSiretSite": "",
                            "numeroSirenSite": "",
                            "numeroFinessSite": "",
                            "numeroFinessetablissementJuridique": "",
                            "identifiantTechniqueDeLaStructure": f"R10100{self.idnat[-6:]}",
                            "raisonSocialeSite": f"Cabinet {self.family_name.title()}",
                            "enseigneCommercialeSite": "",
                            "complementDestinataire": "",
                            "complementPointGeographique": "",
                            "numeroVoie": "12",
                            "indiceRepetitionVoie": "",
                            "codeTypeDeVoie": "R",
                            "libelleVoie": "de la République",
                            "mentionDistribution": "",
                            "bureauCedex": self.city.upper(),
                            "codePostal": "",
                            "codeCommune": "",
                            "codePays": "",
                            "telephone": "",
                            "telephone2": "",
                            "telecopie": "",
                            "adresseEMail": self.bal or "",
                            "codeDepartement": "",
                            "ancienIdentifiantDeLaStructure": "",
                            "autoriteDenregistrement": "",
                        }
                    ],
                }
            )
        return {
            **self.identity_claims(),
            "SubjectRefPro": {"codeCivilite": self.civility, "exercices": exercices},
            "SubjectOrganization": f"Cabinet {self.family_name.title()}",
            "SubjectRole": [f"{self.profession}^1.2.250.1.213.1.1.5.5"] if self.profession else [],
            "otherIds": [{"identifiant": self.idnat[1:], "origine": "RPPS", "qualite": 1}],
        }


class PersonaBook:
    """Personas by key and by idNat."""

    def __init__(self, personas: list[Persona]) -> None:
        self._by_key = {p.key: p for p in personas}
        self._by_idnat = {p.idnat: p for p in personas}
        if len(self._by_key) != len(personas) or len(self._by_idnat) != len(personas):
            raise ValueError("persona keys and idNat must be unique")

    def __iter__(self) -> Iterator[Persona]:
        return iter(self._by_key.values())

    def all(self) -> list[Persona]:
        return list(self._by_key.values())

    def get(self, key: str) -> Persona | None:
        return self._by_key.get(key)

    def by_idnat(self, idnat: str) -> Persona | None:
        return self._by_idnat.get(idnat)


@cache
def default_personas() -> PersonaBook:
    text = resources.files("mock_operator").joinpath("personas.toml").read_text("utf-8")
    return PersonaBook([_persona(raw) for raw in tomllib.loads(text)["persona"]])


def _persona(raw: dict[str, Any]) -> Persona:
    IdNat.parse(raw["idnat"])
    delegations = tuple(
        PersonaDelegation(d["mailbox"], tuple(d["rights"]), d.get("expires_in_days"))
        for d in raw.get("delegation", [])
    )
    fields = {k: v for k, v in raw.items() if k != "delegation"}
    return Persona(**fields, delegations=delegations)
