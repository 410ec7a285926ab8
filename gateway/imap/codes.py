"""IMAP response codes: the one table of what goes between the brackets of a status reply.

Every code the project writes (the engine, the relay, the stores' `StoreError`s) or reads
from a backend's replies is named here, with when we use it, so that the same refusal
reads the same whichever front or backend produced it (RFC 5530 §3 lists the codes; RFC
3501 §7.1 and RFC 4315 add the data-carrying ones). `Code` members are `str`s whose value
is the wire name: ``tagged(tag, "NO", text, Code.NOPERM)``, or with arguments
``f"{Code.UIDNEXT} {uidnext}"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from gateway.runtime.login import AuthFailure


class Code(StrEnum):
    # -- RFC 5530 ---------------------------------------------------------------------------
    # a store or service behind us down or slow; login throttled; the BYE of a node stopping
    UNAVAILABLE = "UNAVAILABLE"
    AUTHENTICATIONFAILED = "AUTHENTICATIONFAILED"  # login: bad token or credentials
    AUTHORIZATIONFAILED = "AUTHORIZATIONFAILED"  # login: this person may not open this BAL
    EXPIRED = "EXPIRED"  # not written: an expired token is AUTHENTICATIONFAILED
    PRIVACYREQUIRED = "PRIVACYREQUIRED"  # LOGIN / AUTHENTICATE in plaintext off loopback
    CONTACTADMIN = "CONTACTADMIN"  # not written
    NOPERM = "NOPERM"  # the grant lacks the right (read, write) a command needs
    INUSE = "INUSE"  # DELETE of a folder that has sub-folders; read: a backend's lock
    EXPUNGEISSUED = "EXPUNGEISSUED"  # FETCH of messages another session expunged
    CORRUPTION = "CORRUPTION"  # not written
    SERVERBUG = "SERVERBUG"  # read from a backend's replies (a temporary failure there)
    CLIENTBUG = "CLIENTBUG"  # not written
    CANNOT = "CANNOT"  # what a store can never do (special folders, historic platform)
    LIMIT = "LIMIT"  # too many folders / sessions, too large for the gateway, pre-auth literal
    OVERQUOTA = "OVERQUOTA"  # read from a backend's replies (APPEND over quota)
    ALREADYEXISTS = "ALREADYEXISTS"  # CREATE / RENAME onto a folder that exists
    NONEXISTENT = "NONEXISTENT"  # a folder or message that does not exist
    # -- RFC 3501 ---------------------------------------------------------------------------
    ALERT = "ALERT"  # not written
    BADCHARSET = "BADCHARSET"  # SEARCH in a charset other than UTF-8 / US-ASCII
    CAPABILITY = "CAPABILITY"  # the greeting and the login OK carry the capability list
    PARSE = "PARSE"  # not written: malformed messages are served as they are
    PERMANENTFLAGS = "PERMANENTFLAGS"  # SELECT: the flags this grant may change
    READ_ONLY = "READ-ONLY"  # EXAMINE, or SELECT without the write right; changes refused
    READ_WRITE = "READ-WRITE"  # SELECT with the write right
    TRYCREATE = "TRYCREATE"  # APPEND / COPY / MOVE to a folder that does not exist
    UIDNEXT = "UIDNEXT"  # SELECT: the predicted next UID
    UIDVALIDITY = "UIDVALIDITY"  # SELECT: the folder's UIDVALIDITY
    UNSEEN = "UNSEEN"  # SELECT: the first message without \Seen
    # -- RFC 4315 (UIDPLUS) -----------------------------------------------------------------
    APPENDUID = "APPENDUID"  # APPEND OK: the new message's UIDVALIDITY and UID
    COPYUID = "COPYUID"  # COPY OK, MOVE's untagged OK: source and destination UIDs
    UIDNOTSTICKY = "UIDNOTSTICKY"  # not written: every folder keeps its UIDs
    # -- RFC 7162 / 9051 --------------------------------------------------------------------
    CLOSED = "CLOSED"  # SELECT with a folder already selected: the previous one is closed
    # -- not registered, read from backends -------------------------------------------------
    TOOBIG = "TOOBIG"  # read from a backend's replies (a message over its size limit)


LOGIN_FAILURES: Mapping[AuthFailure, Code] = MappingProxyType(
    {
        "authentication": Code.AUTHENTICATIONFAILED,
        "authorization": Code.AUTHORIZATIONFAILED,
        "unavailable": Code.UNAVAILABLE,
        "throttled": Code.UNAVAILABLE,  # this address failed too often lately: come back
        "limit": Code.LIMIT,  # this person holds too many sessions
    }
)
"""The code of a refused login, by `gateway.runtime.login.AuthFailed.kind`."""
