"""PSC sessions and refresh tokens, persisted in the mock's SQLite database.

A session lives 4 hours and dies after 30 idle minutes (DOMAIN.md §3). Refresh tokens are
stored hashed and rotate on each use; presenting a used one again revokes the session,
as an authorization server does when it suspects a stolen token. Every access token names
its session (`sid`): introspection and userinfo answer for it only while `alive` does.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Float, ForeignKey, String, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class _Base(DeclarativeBase):
    pass


class SessionRow(_Base):
    __tablename__ = "psc_sessions"
    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    persona: Mapped[str] = mapped_column(String(64))
    means: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[str] = mapped_column(String(128))
    auth_time: Mapped[float] = mapped_column(Float)
    last_active: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RefreshTokenRow(_Base):
    __tablename__ = "psc_refresh_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    sid: Mapped[str] = mapped_column(ForeignKey("psc_sessions.sid"), index=True)
    client_id: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(512))
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


@dataclass(frozen=True)
class PscSession:
    sid: str
    persona: str
    means: str
    client_id: str
    auth_time: float
    last_active: float


class RefreshRefused(Exception):
    """The refresh token is unknown, expired, used, revoked, or its session is over."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lifetime: float,
        idle_timeout: float,
        refresh_lifetime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._db = async_sessionmaker(engine, expire_on_commit=False)
        self._lifetime = lifetime
        self._idle = idle_timeout
        self._refresh_lifetime = refresh_lifetime
        self._clock = clock

    async def create_schema(self) -> None:
        async with self._engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)

    async def open(self, persona: str, means: str, client_id: str) -> PscSession:
        now = self._clock()
        row = SessionRow(
            sid=secrets.token_hex(16),
            persona=persona,
            means=means,
            client_id=client_id,
            auth_time=now,
            last_active=now,
            expires_at=now + self._lifetime,
        )
        async with self._db.begin() as db:
            db.add(row)
        return _session(row)

    async def alive(self, sid: str) -> PscSession | None:
        """The session if it has neither ended, expired nor idled out."""
        async with self._db() as db:
            row = await db.get(SessionRow, sid)
        if row is None or not self._is_alive(row):
            return None
        return _session(row)

    def _is_alive(self, row: SessionRow) -> bool:
        now = self._clock()
        return row.ended_at is None and now < row.expires_at and now - row.last_active < self._idle

    async def end(self, sid: str) -> bool:
        async with self._db.begin() as db:
            result = await db.execute(
                update(SessionRow)
                .where(SessionRow.sid == sid, SessionRow.ended_at.is_(None))
                .values(ended_at=self._clock())
            )
        return bool(getattr(result, "rowcount", 0))

    async def open_sessions(self) -> list[PscSession]:
        """The sessions still alive, by persona then start, for the sessions page."""
        async with self._db() as db:
            rows = await db.scalars(
                select(SessionRow)
                .where(SessionRow.ended_at.is_(None), SessionRow.expires_at > self._clock())
                .order_by(SessionRow.persona, SessionRow.auth_time)
            )
            return [_session(row) for row in rows if self._is_alive(row)]

    async def end_persona(self, persona: str) -> int:
        """End every session of a persona still alive (PSC's "end session"); how many."""
        now = self._clock()
        async with self._db.begin() as db:
            rows = await db.scalars(
                select(SessionRow).where(
                    SessionRow.persona == persona,
                    SessionRow.ended_at.is_(None),
                    SessionRow.expires_at > now,
                )
            )
            ending = [row for row in rows if self._is_alive(row)]
            for row in ending:
                row.ended_at = now
        return len(ending)

    async def issue_refresh(self, session: PscSession, scope: str) -> tuple[str, int]:
        """A new refresh token, living at most until the session's end."""
        now = self._clock()
        token = secrets.token_urlsafe(32)
        async with self._db.begin() as db:
            row = await db.get(SessionRow, session.sid)
            assert row is not None
            expires = min(now + self._refresh_lifetime, row.expires_at)
            db.add(
                RefreshTokenRow(
                    token_hash=_hash(token),
                    sid=session.sid,
                    client_id=session.client_id,
                    scope=scope,
                    expires_at=expires,
                )
            )
        return token, max(1, int(expires - now))

    async def use_refresh(self, token: str, client_id: str) -> tuple[PscSession, str]:
        """Consume a refresh token (rotation). Reuse of a consumed token ends its session."""
        now = self._clock()
        refused: str | None = None
        async with self._db.begin() as db:
            row = await db.get(RefreshTokenRow, _hash(token))
            if row is None or row.client_id != client_id:
                raise RefreshRefused("unknown refresh token")
            session = await db.get(SessionRow, row.sid)
            assert session is not None
            if row.used_at is not None:
                session.ended_at = session.ended_at or now  # committed, then refused below
                refused = "refresh token already used: session revoked"
            elif row.revoked_at is not None or row.expires_at <= now:
                refused = "refresh token expired or revoked"
            elif not self._is_alive(session):
                refused = "session is over"
            else:
                row.used_at = now
                session.last_active = now
            result = _session(session), row.scope
        if refused:
            raise RefreshRefused(refused)
        return result

    async def revoke_refresh(self, token: str, client_id: str) -> None:
        """RFC 7009: revoke if it is this client's; unknown tokens are not an error."""
        async with self._db.begin() as db:
            await db.execute(
                update(RefreshTokenRow)
                .where(
                    RefreshTokenRow.token_hash == _hash(token),
                    RefreshTokenRow.client_id == client_id,
                )
                .values(revoked_at=self._clock())
            )

    async def session_of_refresh(self, token: str) -> str | None:
        async with self._db() as db:
            sid = await db.scalar(
                select(RefreshTokenRow.sid).where(RefreshTokenRow.token_hash == _hash(token))
            )
        return sid


def _session(row: SessionRow) -> PscSession:
    return PscSession(
        row.sid, row.persona, row.means, row.client_id, row.auth_time, row.last_active
    )
