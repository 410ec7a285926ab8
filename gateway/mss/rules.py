"""The MSSanté message rules (Référentiel #2, ECO.2.x) checked on a submitted message.

`check_message` returns every rule a message breaks as a `Violation` carrying an enhanced
status code, a rule id from the closed list `RULES` (with its scope: the sender-identity
and safety rules always refuse, the X-MSS-* header rules follow `[mss] policy`, see
`gateway.mss.policy`) and an ASCII, single-line, French + English text that an SMTP reply
can carry as is (``554 5.6.0 <text>``). Values copied from the message are sanitised and truncated
first: the reply must not let a sender inject CR/LF or 8-bit octets into our SMTP answer.

The rules (DOMAIN.md §2):

* every line of the header block is an ordinary field or its continuation (5.6.0 naming
  the first that is not: ``From : x``, an mbox ``From `` line, a line without a colon, a
  bare CR or LF), so that no field hides from this check and shows at the recipient's
  (`gateway.mss.headers`);
* ``X-MSS-NIL`` on every message; missing, it is added from the configured default;
* exactly one ``From:``, naming exactly the sending BAL, whose display name and comments
  name no other address; ``Resent-From`` and ``Resent-Sender`` name only the BAL if
  present (5.7.1: a policy refusal, not a syntax one);
* ``X-MSS-CODECDA`` and ``X-MSS-INS`` if and only if a CDA document sits in an
  ``IHE_XDM.ZIP`` attachment; CODECDA lists exactly the documents' codes, INS is ``O``
  when METADATA.XML carries a qualified INS, else ``N``;
* ``X-MSS-MES: FIN`` only on messages to a Mon Espace Santé address
  (``<INS>@patient.mssante.fr``);
* an IHE_XDM.ZIP that cannot be read safely is a content error (5.6.0);
* a message above the size limit is 5.3.4, and nothing else is looked at.

MIME is parsed by the standard `email` package with the compat32 policy (it never raises
on a header value), walked iteratively with a cap on parts and depth. Message/rfc822
parts are not entered: an attached message's IHE_XDM.ZIP is that message's business.

`add_headers` and `add_sender` edit the raw octets (prepend, or drop whole header fields)
and never re-serialise the message, so signatures and the body stay byte-exact.
"""

from __future__ import annotations

import email
import email.parser
import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email import errors
from email.errors import HeaderParseError
from email.header import decode_header
from email.headerregistry import AddressHeader, BaseHeader
from email.message import Message
from email.policy import compat32
from email.policy import default as default_policy
from email.utils import collapse_rfc2231_value, formataddr, getaddresses
from typing import Literal

from gateway.mss.headers import HeaderField, UnreadableHeader, header_fields
from gateway.mss.xdm import DEFAULT_LIMITS, XdmContent, XdmError, XdmLimits, read_xdm

MIB = 1024 * 1024
DEFAULT_MAX_SIZE = 25 * MIB
MAX_PARTS = 1000
MAX_DEPTH = 50
PATIENT_DOMAIN = "patient.mssante.fr"
XDM_FILENAME = "ihe_xdm.zip"
XDM_CONTENT_TYPES = frozenset(
    {"application/zip", "application/octet-stream", "application/x-zip-compressed"}
)
MAX_LINE = 998  # RFC 5322 §2.1.1
RESENT_FIELDS = frozenset({"resent-from", "resent-sender"})

StatusCode = Literal["5.3.4", "5.6.0", "5.7.1"]
Scope = Literal["sender", "safety", "mss"]
"""What a rule protects. ``sender``: who the message claims to be from; ``safety``: what
the gateway cannot read safely (size, header block, MIME tree, archive); both are always
refused. ``mss``: the MSSanté header rules (ECO.2.x), obligations on the LPS that the
gateway's `[mss] policy` enforces or only reports (`gateway.mss.policy`)."""
_BASIC_CODES: dict[str, int] = {"5.3.4": 552, "5.6.0": 554, "5.7.1": 550}

_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_QUOTES = str.maketrans("", "", "\"'`\\[]")
_TOKEN_BREAK = re.compile(r"[\s<>(),;:]+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = re.compile(
    rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class Rule:
    """A rule id's scope, and the header (or attachment) it is about, which is all that a
    log line or the usage figures say of the message."""

    scope: Scope
    header: str | None = None


def _header_rules(header: str, *suffixes: str) -> dict[str, Rule]:
    return {f"{header}-{suffix}": Rule("mss", header) for suffix in suffixes}


RULES: dict[str, Rule] = {
    "message-too-big": Rule("safety"),
    "header-unreadable": Rule("sender"),  # a line that would hide a field from the checks
    "message-unparsable": Rule("safety"),
    "MIME-too-complex": Rule("safety"),
    "IHE_XDM-unreadable": Rule("safety", "IHE_XDM.ZIP"),  # a zip bomb is not relayed
    "From-mismatch": Rule("sender", "From"),
    "From-display-address": Rule("sender", "From"),
    "Resent-From-mismatch": Rule("sender", "Resent-From"),
    "Resent-Sender-mismatch": Rule("sender", "Resent-Sender"),
    **_header_rules("X-MSS-NIL", "missing", "empty", "duplicate"),
    **_header_rules("X-MSS-CODECDA", "missing", "mismatch", "unexpected", "duplicate"),
    **_header_rules("X-MSS-INS", "missing", "invalid", "mismatch", "unexpected", "duplicate"),
    **_header_rules("X-MSS-MES", "invalid", "unexpected", "duplicate"),
    "CDA-code-missing": Rule("mss", "IHE_XDM.ZIP"),
}
"""Every rule id `check_message` gives: a closed list, so that what counts and logs rule
ids (the usage figures, metrics) never takes one from a message."""
UNKNOWN_RULE = Rule("sender")  # a rule id missing from RULES is refused under any policy


@dataclass(frozen=True)
class Violation:
    """One broken rule: `code` is the enhanced status, `rule` a stable id for logs/tests."""

    code: StatusCode
    rule: str
    text: str

    @property
    def smtp_code(self) -> int:
        """The basic reply code that goes with `code` (552, 554 or 550)."""
        return _BASIC_CODES[self.code]

    @property
    def reply(self) -> str:
        """``5.6.0 <text>``: what follows the basic code in the SMTP reply."""
        return f"{self.code} {self.text}"

    @property
    def scope(self) -> Scope:
        return RULES.get(self.rule, UNKNOWN_RULE).scope

    @property
    def header(self) -> str | None:
        return RULES.get(self.rule, UNKNOWN_RULE).header


@dataclass
class RuleResult:
    """The violations (empty: accept) and the headers to prepend before relaying."""

    violations: list[Violation] = field(default_factory=list)
    headers_to_add: list[tuple[str, str]] = field(default_factory=list)
    nil: str | None = None  # the client's (first) X-MSS-NIL, if the header block reads

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def rules(self) -> list[str]:
        return [violation.rule for violation in self.violations]


class _TooComplex(Exception):
    """The MIME tree has more parts or levels than we agree to walk."""


def check_message(
    raw: bytes,
    *,
    sender: str,
    default_nil: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    recipients: Sequence[str] = (),
    xdm_limits: XdmLimits = DEFAULT_LIMITS,
) -> RuleResult:
    """Check `raw` (RFC 5322 octets) sent by the BAL `sender`; never raises on any input.

    `recipients` are the SMTP envelope recipients, counted with To/Cc/Bcc when deciding
    whether the message goes to a patient (X-MSS-MES). `default_nil` is the LPS's
    registration number, added when the client did not set X-MSS-NIL.
    """
    if default_nil is not None:
        _check_field("X-MSS-NIL", default_nil)
    result = RuleResult()
    try:
        fields = header_fields(raw)
    except UnreadableHeader as error:
        unreadable: UnreadableHeader | None = error
        fields = []
    else:
        unreadable = None
        result.nil = next(
            (f.value.decode("latin-1").strip() for f in fields if f.key == "x-mss-nil"), None
        )
    if len(raw) > max_size:
        result.violations.append(
            _violation(
                "5.3.4",
                "message-too-big",
                f"Message trop volumineux ({len(raw)} octets, maximum {max_size})",
                f"message too big ({len(raw)} bytes, limit {max_size})",
            )
        )
        return result
    if (bad := unreadable) is not None:
        result.violations.append(
            _violation(
                "5.6.0",
                "header-unreadable",
                f"Ligne d'en-tete {bad.line} illisible: '{bad.shown}'",
                f"unreadable header line {bad.line}: '{bad.shown}' ({bad.why})",
            )
        )
        return result
    try:
        message = _parse(raw, fields)
    except Exception:  # RecursionError on absurd nesting, and whatever else: refuse
        result.violations.append(
            _violation("5.6.0", "message-unparsable", "Message illisible", "unparsable message")
        )
        return result
    _check_from(fields, sender, result)
    _check_nil(message, default_nil, result)
    _check_cda_headers(message, xdm_limits, result)
    _check_mes(message, recipients, result)
    return result


def _parse(raw: bytes, fields: Sequence[HeaderField]) -> Message:
    """The message as compat32 parses it, its body parsed only when a rule may look inside:
    a multipart or message/* body (attachments, an IHE_XDM.ZIP among them), or a single
    part that is itself an IHE_XDM.ZIP. Any other body (a 50 KiB letter) is one opaque
    part that no rule reads, and its headers are `head_message`'s."""
    head = head_message(fields)
    if head.get_content_maintype() in ("multipart", "message") or _is_xdm(head):
        return email.message_from_bytes(raw, policy=compat32)
    return head


def head_message(fields: Sequence[HeaderField]) -> Message:
    """The header block `header_fields` read, as compat32's parser makes it of the block
    alone (the same fields and values; the parser is not run again: every line passed
    `header_fields`, so it would read each of them as one field or a fold of one)."""
    head = Message(policy=compat32)
    for field_ in fields:
        value = field_.source.lstrip(b" \t").decode("ascii", "surrogateescape")
        head.set_raw(field_.name, value.rstrip("\r\n"))
    head.set_payload("")
    return head


def _check_from(fields: Sequence[HeaderField], sender: str, result: RuleResult) -> None:
    bal = sender.strip().lower()
    froms = [field for field in fields if field.key == "from"]
    if len(froms) != 1 or not _names_only(froms[0], bal):
        result.violations.append(
            _violation(
                "5.7.1",
                "From-mismatch",
                f"From doit contenir la seule adresse de la BAL {_show(sender)}",
                f"From must be exactly the mailbox {_show(sender)}",
            )
        )
    elif _names_another(froms[0], bal):
        result.violations.append(
            _violation(
                "5.7.1",
                "From-display-address",
                "Le nom affiche dans From contient une autre adresse que la BAL",
                "the From display name contains an address other than the mailbox's",
            )
        )
    for header in fields:
        if header.key in RESENT_FIELDS and (
            not _names_only(header, bal) or _names_another(header, bal)
        ):
            result.violations.append(
                _violation(
                    "5.7.1",
                    f"{header.key.title()}-mismatch",
                    f"{header.key.title()} ne peut contenir que l'adresse de la BAL "
                    f"{_show(sender)}",
                    f"{header.key.title()} may only name the mailbox {_show(sender)}",
                )
            )


def _names_only(field: HeaderField, bal: str) -> bool:
    """Whether the field's one addr-spec is the BAL."""
    return _single_address(_field_text(field)) == bal


def _names_another(field: HeaderField, bal: str) -> bool:
    """Whether what a reader sees beside the address (display name, comments, decoded from
    RFC 2047 word by word and folded to NFKC, so that a full-width @ counts) holds another
    address. A word in an unknown charset is read as Latin-1, never taken as a refusal."""
    text = _field_text(field)
    try:
        chunks = decode_header(text)
    except HeaderParseError:  # an encoded word that does not decode: read it as it is
        chunks = [(text, None)]
    words: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            words.append(chunk)
        elif charset is None:
            words.append(chunk.decode("raw-unicode-escape", "replace"))  # text between words
        else:
            try:
                words.append(chunk.decode(charset, "replace"))
            except LookupError:
                words.append(chunk.decode("latin-1"))
    # What a reader would not see, or would read as part of one word: controls, format
    # characters, line separators, quotes and brackets (`"ceo"@evil.com`, `ceo@[10.0.0.1]`).
    visible = "".join(c for c in "".join(words) if unicodedata.category(c) not in _HIDDEN)
    seen = unicodedata.normalize("NFKC", visible.translate(_QUOTES)).casefold()
    for token in _TOKEN_BREAK.split(seen):
        local, at, domain = token.strip(".").partition("@")
        if at and local and domain and token.strip(".") != bal:
            return True
    return False


def _field_text(field: HeaderField) -> str:
    """The value as text: UTF-8 (RFC 6532), else Latin-1, as older practice software
    writes names; the address, ASCII, reads the same either way."""
    try:
        return field.value.decode("utf-8")
    except UnicodeDecodeError:
        return field.value.decode("latin-1")


def _single_address(value: str) -> str | None:
    """`_parse_single_address`, remembered for the short values a client sends again and
    again (its own From, message after message)."""
    return _known_address(value) if len(value) <= MAX_LINE else _parse_single_address(value)


def _parse_single_address(value: str) -> str | None:
    """The one addr-spec of a From value, lower-cased; None unless two parsers agree.

    The modern parser drops what it cannot parse (reporting a defect) while getaddresses
    may split it differently: requiring a clean parse and agreement fails closed on the
    ``alice@x)<bob@y>`` family of ambiguities (CVE-2023-27043).
    """
    try:
        header = default_policy.header_factory("From", value)
        legacy = getaddresses([value])
    except Exception:
        return None
    if not isinstance(header, AddressHeader) or not isinstance(header, BaseHeader):
        return None
    if any(isinstance(defect, errors.InvalidHeaderDefect) for defect in header.defects):
        return None
    groups = header.groups
    if len(groups) != 1 or groups[0].display_name is not None or len(groups[0].addresses) != 1:
        return None
    address = groups[0].addresses[0].addr_spec.lower()
    if len(legacy) != 1 or legacy[0][1].lower() != address or "@" not in address:
        return None
    return address


_known_address = functools.lru_cache(maxsize=1024)(_parse_single_address)


def _check_nil(message: Message, default_nil: str | None, result: RuleResult) -> None:
    nil = _single(message, "X-MSS-NIL", result)
    if nil is None:
        if default_nil is not None:
            result.headers_to_add.append(("X-MSS-NIL", default_nil.strip()))
        else:
            result.violations.append(
                _violation(
                    "5.6.0",
                    "X-MSS-NIL-missing",
                    "En-tete X-MSS-NIL absent (numero d'enregistrement du logiciel)",
                    "X-MSS-NIL header missing (software registration number)",
                )
            )
    elif not nil:
        result.violations.append(
            _violation(
                "5.6.0",
                "X-MSS-NIL-empty",
                "En-tete X-MSS-NIL vide",
                "empty X-MSS-NIL header",
            )
        )


def _check_cda_headers(message: Message, limits: XdmLimits, result: RuleResult) -> None:
    contents: list[XdmContent] = []
    unreadable = False
    try:
        payloads = _xdm_payloads(message)
    except _TooComplex:
        result.violations.append(
            _violation(
                "5.6.0",
                "MIME-too-complex",
                f"Structure MIME trop complexe (plus de {MAX_PARTS} parties "
                f"ou {MAX_DEPTH} niveaux)",
                f"MIME structure too complex (over {MAX_PARTS} parts or {MAX_DEPTH} levels)",
            )
        )
        return
    for payload in payloads:
        try:
            if payload is None:
                raise XdmError("attachment cannot be decoded")
            contents.append(read_xdm(payload, limits))
        except XdmError as exc:
            unreadable = True
            result.violations.append(
                _violation(
                    "5.6.0",
                    "IHE_XDM-unreadable",
                    "Piece jointe IHE_XDM.ZIP illisible",
                    f"unreadable IHE_XDM.ZIP attachment: {_show(str(exc), 120)}",
                )
            )
    codecda = _single(message, "X-MSS-CODECDA", result)
    ins = _single(message, "X-MSS-INS", result)
    documents = [doc for content in contents for doc in content.documents]
    if not documents:
        # With an unreadable archive we cannot tell whether the headers are due.
        if not unreadable:
            for name, value in (("X-MSS-CODECDA", codecda), ("X-MSS-INS", ins)):
                if value is not None:
                    result.violations.append(
                        _violation(
                            "5.6.0",
                            f"{name}-unexpected",
                            f"En-tete {name} sans document CDA dans une piece jointe IHE_XDM.ZIP",
                            f"{name} header without a CDA document in an IHE_XDM.ZIP attachment",
                        )
                    )
        return
    uncoded = [doc.path for doc in documents if doc.code is None]
    if uncoded:
        result.violations.append(
            _violation(
                "5.6.0",
                "CDA-code-missing",
                f"Document CDA sans code/@code: {_show(uncoded[0])}",
                f"CDA document without code/@code: {_show(uncoded[0])}",
            )
        )
    expected_codes = {doc.code for doc in documents if doc.code is not None}
    if codecda is None:
        result.violations.append(
            _violation(
                "5.6.0",
                "X-MSS-CODECDA-missing",
                "En-tete X-MSS-CODECDA absent alors qu'un document CDA est joint",
                "X-MSS-CODECDA header missing while a CDA document is attached",
            )
        )
    else:
        listed = {code.strip() for code in codecda.split(",") if code.strip()}
        if listed != expected_codes:
            expected = ",".join(sorted(expected_codes))
            result.violations.append(
                _violation(
                    "5.6.0",
                    "X-MSS-CODECDA-mismatch",
                    f"X-MSS-CODECDA {_show(codecda)} ne correspond pas aux documents ({expected})",
                    f"X-MSS-CODECDA does not match the documents' codes ({_show(expected)})",
                )
            )
    if ins is None:
        result.violations.append(
            _violation(
                "5.6.0",
                "X-MSS-INS-missing",
                "En-tete X-MSS-INS absent alors qu'un document CDA est joint",
                "X-MSS-INS header missing while a CDA document is attached",
            )
        )
    elif ins not in ("O", "N"):
        result.violations.append(
            _violation(
                "5.6.0",
                "X-MSS-INS-invalid",
                f"X-MSS-INS doit valoir O ou N, pas {_show(ins)}",
                "X-MSS-INS must be O or N",
            )
        )
    else:
        qualified = all(content.ins_qualified for content in contents if content.documents)
        expected_ins = "O" if qualified else "N"
        if ins != expected_ins:
            result.violations.append(
                _violation(
                    "5.6.0",
                    "X-MSS-INS-mismatch",
                    f"X-MSS-INS doit valoir {expected_ins} (INS "
                    f"{'qualifie' if qualified else 'non qualifie'} dans METADATA.XML)",
                    f"X-MSS-INS must be {expected_ins} (METADATA.XML carries "
                    f"{'a qualified' if qualified else 'no qualified'} INS)",
                )
            )


def _check_mes(message: Message, recipients: Sequence[str], result: RuleResult) -> None:
    mes = _single(message, "X-MSS-MES", result)
    if mes is None:
        return
    if mes != "FIN":
        result.violations.append(
            _violation(
                "5.6.0",
                "X-MSS-MES-invalid",
                f"X-MSS-MES ne peut valoir que FIN, pas {_show(mes)}",
                "X-MSS-MES may only be FIN",
            )
        )
    if not any(_is_patient(address) for address in _recipients(message, recipients)):
        result.violations.append(
            _violation(
                "5.6.0",
                "X-MSS-MES-unexpected",
                f"X-MSS-MES reserve aux messages vers une adresse @{PATIENT_DOMAIN}",
                f"X-MSS-MES only for messages to a @{PATIENT_DOMAIN} address",
            )
        )


def _recipients(message: Message, envelope: Sequence[str]) -> Iterator[str]:
    yield from envelope
    values = [_text(value) for name in ("To", "Cc", "Bcc") for value in message.get_all(name, [])]
    try:
        parsed = getaddresses(values)
    except Exception:
        return
    for _name, address in parsed:
        yield address


def _is_patient(address: str) -> bool:
    _local, at, domain = address.strip().strip("<>").rpartition("@")
    return bool(at) and domain.lower().rstrip(".") == PATIENT_DOMAIN


def _xdm_payloads(message: Message) -> list[bytes | None]:
    """The decoded IHE_XDM.ZIP attachments (None: undecodable), walking the tree iteratively."""
    found: list[bytes | None] = []
    stack: list[tuple[Message, int]] = [(message, 0)]
    walked = 0
    while stack:
        part, depth = stack.pop()
        walked += 1
        if walked > MAX_PARTS or depth > MAX_DEPTH:
            raise _TooComplex
        if part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(
                    (sub, depth + 1) for sub in reversed(payload) if isinstance(sub, Message)
                )
            continue
        if _is_xdm(part):
            try:
                data = part.get_payload(decode=True)
            except Exception:
                data = None
            found.append(data if isinstance(data, bytes) else None)
    return found


def _is_xdm(part: Message) -> bool:
    """An IHE_XDM.ZIP attachment: name (filename or name=) matched case-insensitively."""
    try:
        if part.get_content_type() not in XDM_CONTENT_TYPES:
            return False
        names: list[str] = []
        filename = part.get_filename()
        if isinstance(filename, str):
            names.append(filename)
        name = part.get_param("name")
        if isinstance(name, tuple):
            names.append(collapse_rfc2231_value(name))
        elif isinstance(name, str):
            names.append(name)
    except Exception:
        return False
    return any(
        re.split(r"[/\\]", n.strip().strip('"'))[-1].casefold() == XDM_FILENAME for n in names
    )


def _single(message: Message, name: str, result: RuleResult) -> str | None:
    """The unfolded, stripped value of a header that may appear once (a second is an error)."""
    values = message.get_all(name) or []
    if not values:
        return None
    if len(values) > 1:
        result.violations.append(
            _violation(
                "5.6.0",
                f"{name}-duplicate",
                f"En-tete {name} present plusieurs fois",
                f"duplicate {name} header",
            )
        )
    return _text(values[0]).strip()


def _text(value: object) -> str:
    """compat32 gives str, or a Header for 8-bit values: unfold either way."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        text = ""
    return _UNFOLD.sub("", text)


def _violation(code: StatusCode, rule: str, french: str, english: str) -> Violation:
    return Violation(code, rule, _UNPRINTABLE.sub("?", f"{french} / {english}"))


def _show(value: str, limit: int = 60) -> str:
    """A message-supplied value made safe for an SMTP reply: printable ASCII, short."""
    text = _UNPRINTABLE.sub("?", value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- editing the raw message -------------------------------------------------------------


def add_headers(raw: bytes, headers: Iterable[tuple[str, str]]) -> bytes:
    """Prepend header fields; the original octets follow unchanged (signatures survive).

    Values must be ASCII (encode words per RFC 2047 first) and single-line. The line end
    is the message's own (CRLF unless the message uses bare LF).
    """
    eol = _line_end(raw)
    prefix = b"".join(_check_field(name, value).encode("ascii") + eol for name, value in headers)
    return prefix + raw


def add_sender(raw: bytes, delegate_name: str, delegate_address: str) -> bytes:
    """Name the delegate who sends for the holder in ``Sender:`` (RFC 5322 §3.6.2).

    The caller chooses the address (a real mailbox, or a syntactically valid stand-in);
    any Sender field the client set is removed first, so the delegate cannot pose as
    someone else and the message keeps a single Sender.
    """
    address = delegate_address.strip()
    if not _ADDR_SPEC.fullmatch(address):
        raise ValueError(f"not a plain ASCII addr-spec: {address!r}")
    name = delegate_name.strip()
    if _CONTROL.search(name):
        raise ValueError("delegate name must be a single line without control characters")
    value = formataddr((name, address), charset="utf-8") if name else address
    return add_headers(remove_fields(raw, "Sender"), [("Sender", value)])


def _check_field(name: str, value: str) -> str:
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if not value.strip() or "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"invalid value for {name}: {value!r}")
    if not value.isascii():
        raise ValueError(f"non-ASCII value for {name}: encode it per RFC 2047 first")
    line = f"{name}: {value.strip()}"
    if len(line) > MAX_LINE:
        raise ValueError(f"{name} line longer than {MAX_LINE} characters")
    return line


def _line_end(raw: bytes) -> bytes:
    first = raw.find(b"\n")
    return b"\n" if first == 0 or (first > 0 and raw[first - 1 : first] != b"\r") else b"\r\n"


def remove_fields(raw: bytes, name: str) -> bytes:
    """Drop every top-level `name` field (with its folded lines), leaving the rest as is."""
    target = name.lower().encode("ascii")
    kept: list[bytes] = []
    position = 0
    dropping = False
    while position < len(raw):
        end = raw.find(b"\n", position)
        end = len(raw) if end < 0 else end + 1
        line = raw[position:end]
        if line in (b"\r\n", b"\n"):
            break  # end of the header block: the body stays untouched
        if line[:1] not in (b" ", b"\t"):
            field_name, colon, _rest = line.partition(b":")
            dropping = bool(colon) and field_name.rstrip(b" \t").lower() == target
        if not dropping:
            kept.append(line)
        position = end
    return b"".join(kept) + raw[position:]
