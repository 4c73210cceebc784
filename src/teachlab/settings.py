"""TeachLab's settings: one typed object read from ``TEACHLAB_*`` environment variables.

Each field's description is its documentation; ``tests/test_docs.py`` fails when the
README does not mention a field's environment variable.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from teachlab.errors import ConfigError

SPACES_DATA = Path("/data")


def on_space() -> bool:
    """True on a Hugging Face Space (it sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def _default_teacher() -> str:
    # A Space installs requirements.txt only (no bundled GGUF packages) but reaches the Hub.
    return "google/gemma-3-270m" if on_space() else "bundled:gemma-3-270m"


def _default_student() -> str:
    return "HuggingFaceTB/SmolLM2-135M-Instruct" if on_space() else "bundled:smollm2-135m-instruct"


def _default_storage() -> Path:
    # Hugging Face Spaces mount persistent storage at /data; use it when it is there.
    if SPACES_DATA.is_dir() and os.access(SPACES_DATA, os.W_OK):
        return SPACES_DATA
    return Path("storage")


def normalise_database_url(url: str) -> str:
    """A database URL as SQLAlchemy takes it (PostgreSQL through psycopg 3), or ConfigError."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ConfigError(
            f"TEACHLAB_DATABASE_URL {url!r} is not a URL; give postgresql://USER:PASSWORD@HOST:"
            "PORT/DB, or leave it unset for SQLite in the storage folder."
        )
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme == "sqlite" and rest.startswith("/"):
        return url
    raise ConfigError(
        f"TEACHLAB_DATABASE_URL names a {scheme!r} database; TeachLab runs on PostgreSQL "
        "(postgresql://USER:PASSWORD@HOST:PORT/DB) or SQLite (sqlite:////ABSOLUTE/PATH.db)."
    )


class Settings(BaseSettings):
    """All of TeachLab's configuration. Set with environment variables ``TEACHLAB_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="TEACHLAB_", extra="ignore")

    storage: Path = Field(
        default_factory=_default_storage,
        description="Folder for the study database, task data, runs and exports "
        "(default ./storage, or /data when it exists as on Hugging Face Spaces).",
    )
    model_cache: Path | None = Field(
        default=None,
        description="Folder for de-quantised bundled models (default <storage>/models).",
    )
    data_cache: Path | None = Field(
        default=None,
        description="Folder for fetched task data such as BIG-bench (default <storage>/data).",
    )
    teacher: str = Field(
        default_factory=_default_teacher,
        description="Default teacher model reference for new studies "
        "(on a Space: the same model by its Hub id).",
    )
    student: str = Field(
        default_factory=_default_student,
        description="Default student model reference for new studies.",
    )
    host: str = Field(default="127.0.0.1", description="Address the web app listens on.")
    port: int = Field(default=7860, ge=0, le=65535, description="Port the web app listens on.")
    auth: str | None = Field(
        default=None,
        description="Logins as comma-separated user:password:role (role admin or annotator); "
        "unset means no login and every visitor is admin.",
    )
    users_file: Path | None = Field(
        default=None,
        description="A file of user:password:role lines, read in addition to TEACHLAB_AUTH.",
    )
    session_hours: float = Field(
        default=12.0,
        gt=0,
        le=24 * 30,
        description="How long a web login lasts before the login page comes back (hours).",
    )
    demo_mode: bool = Field(
        default=False,
        description="Public-demo mode: small size limits and heavy runs (align, distil) off.",
    )
    demo_study: bool = Field(
        default=True,
        description="Create the demo study on first start when the database has no studies.",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="torch CPU threads for model work (0 lets torch decide).",
    )
    offline: bool = Field(
        default=False,
        description="Never contact the Hugging Face Hub; only bundled, cached or local models.",
    )
    max_upload_mb: int = Field(
        default=20, ge=1, description="Largest task file accepted for upload, in megabytes."
    )
    database_url: str | None = Field(
        default=None,
        description="A shared database instead of SQLite in the storage folder: "
        "postgresql://USER:PASSWORD@HOST:PORT/DB (several workers and machines on one study).",
    )

    @field_validator("database_url", mode="before")
    @classmethod
    def _database(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() == "":
            return None
        if isinstance(value, str):
            return normalise_database_url(value.strip())
        return value

    @field_validator("storage", "model_cache", "data_cache", "users_file", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() == "":
            return None
        if isinstance(value, str):
            return Path(value).expanduser()
        return value

    @property
    def models_dir(self) -> Path:
        return self.model_cache or self.storage / "models"

    @property
    def data_dir(self) -> Path:
        return self.data_cache or self.storage / "data"

    @property
    def db_path(self) -> Path:
        return self.storage / "teachlab.db"

    @property
    def db_url(self) -> str:
        """Where the study database is: ``database_url`` when set, else SQLite in storage."""
        return self.database_url or f"sqlite:///{self.db_path}"

    @property
    def runs_dir(self) -> Path:
        return self.storage / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.storage / "exports"

    @property
    def storage_is_persistent(self) -> bool:
        """False on a Space without persistent storage (data vanishes on restart)."""
        return not on_space() or self.storage.resolve() == SPACES_DATA

    def users(self) -> dict[str, tuple[str, str]]:
        """Map user name to (password, role) from TEACHLAB_AUTH and TEACHLAB_USERS_FILE."""
        entries: list[tuple[str, str]] = []
        if self.auth:
            entries += [("TEACHLAB_AUTH", e) for e in self.auth.split(",") if e.strip()]
        if self.users_file:
            try:
                lines = self.users_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"Cannot read TEACHLAB_USERS_FILE {self.users_file}: {exc.strerror}; "
                    "fix the path or unset the variable."
                ) from exc
            entries += [
                (f"{self.users_file}:{i}", line)
                for i, line in enumerate(lines, 1)
                if line.strip() and not line.lstrip().startswith("#")
            ]
        users: dict[str, tuple[str, str]] = {}
        for where, entry in entries:
            parts = entry.strip().split(":")
            if len(parts) == 2:
                parts.append("admin")
            if len(parts) != 3 or not parts[0] or not parts[1]:
                raise ConfigError(
                    f"Bad login entry at {where}: expected user:password:role, "
                    "for example alice:s3cret:admin or bob:pw:annotator."
                )
            name, password, role = parts
            if role not in ("admin", "annotator"):
                raise ConfigError(
                    f"Bad role {role!r} for user {name!r} at {where}: use admin or annotator."
                )
            users[name] = (password, role)
        return users

    def ensure_dirs(self) -> None:
        for path in (self.storage, self.models_dir, self.data_dir, self.runs_dir):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings()
