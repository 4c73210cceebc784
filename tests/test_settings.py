"""Settings: every TEACHLAB_* variable is documented; values parse and fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from teachlab.errors import ConfigError
from teachlab.settings import Settings, get_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [
        f"TEACHLAB_{name.upper()}"
        for name in Settings.model_fields
        if f"TEACHLAB_{name.upper()}" not in text
    ]
    assert missing == [], f"document these in README.md: {missing}"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEACHLAB_STORAGE", str(tmp_path / "s"))
    monkeypatch.setenv("TEACHLAB_PORT", "9999")
    monkeypatch.setenv("TEACHLAB_DEMO_MODE", "true")
    get_settings.cache_clear()
    s = get_settings()
    assert s.storage == tmp_path / "s" and s.port == 9999 and s.demo_mode is True
    assert s.db_path == tmp_path / "s" / "teachlab.db"


def test_storage_defaults_to_data_on_spaces(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import teachlab.settings as settings_module

    monkeypatch.delenv("TEACHLAB_STORAGE")
    fake_data = tmp_path / "data"
    monkeypatch.setattr(settings_module, "SPACES_DATA", fake_data)
    assert Settings().storage == Path("storage")
    fake_data.mkdir()
    assert Settings().storage == fake_data
    monkeypatch.setenv("SPACE_ID", "someone/teachlab")
    assert Settings().storage_is_persistent is True
    assert Settings(storage=tmp_path / "elsewhere").storage_is_persistent is False


def test_users_parse_and_bad_entries_fail_clearly(tmp_path: Path) -> None:
    users_file = tmp_path / "users.txt"
    users_file.write_text("# comment\ncarol:pw3:annotator\n")
    s = Settings(auth="alice:pw1:admin,bob:pw2:annotator", users_file=users_file)
    assert s.users() == {
        "alice": ("pw1", "admin"),
        "bob": ("pw2", "annotator"),
        "carol": ("pw3", "annotator"),
    }
    with pytest.raises(ConfigError, match="user:password:role"):
        Settings(auth="justaname").users()
    with pytest.raises(ConfigError, match="admin or annotator"):
        Settings(auth="dave:pw:superuser").users()
    with pytest.raises(ConfigError, match="TEACHLAB_USERS_FILE"):
        Settings(users_file=tmp_path / "missing.txt").users()


def test_bad_port_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("TEACHLAB_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_space_defaults_use_hub_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert Settings().student == "bundled:smollm2-135m-instruct"
    monkeypatch.setenv("SPACE_ID", "someone/teachlab")
    s = Settings()
    assert s.student == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert s.teacher == "google/gemma-3-270m"
