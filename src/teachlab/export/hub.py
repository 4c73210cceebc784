"""Push an export folder to the Hugging Face Hub as a dataset repository.

``push_to_hub`` always builds the plan first (every file with its size, the repository and
its visibility); a dry run returns it without touching the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from teachlab.errors import ConfigError, JobError
from teachlab.export.paths import export_dir, folder_files

REPO_TYPE = "dataset"


@dataclass(frozen=True)
class PushPlan:
    repo_id: str
    repo_type: str
    private: bool
    folder: Path
    files: tuple[tuple[str, int], ...]  # (path in the repository, bytes)
    dry_run: bool
    url: str | None = None  # the commit's URL once pushed

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def _check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = (repo_id or "").strip()
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"{repo_id!r} is not a Hub repository id: {exc}") from exc
    if "/" not in repo_id:
        raise ConfigError(
            f"Repository id {repo_id!r} lacks its owner; write it as <user or org>/<name>."
        )
    return repo_id


def hub_token(token: str | None = None) -> str:
    """The token to push with: given, else HF_TOKEN, else the `hf auth login` one."""
    from huggingface_hub import get_token

    found = token or os.environ.get("HF_TOKEN") or get_token()
    if not found:
        raise ConfigError(
            "No Hugging Face token: pushing needs one with write access. Set HF_TOKEN or run "
            "`hf auth login`, then push again (or keep dry run on to see the plan)."
        )
    return found


def plan_push(name: str, repo_id: str, *, private: bool = True, dry_run: bool = True) -> PushPlan:
    folder = export_dir(name, must_exist=True)
    return PushPlan(
        repo_id=_check_repo_id(repo_id),
        repo_type=REPO_TYPE,
        private=private,
        folder=folder,
        files=tuple(folder_files(folder)),
        dry_run=dry_run,
    )


def push_to_hub(
    name: str,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    dry_run: bool = True,
) -> PushPlan:
    """Upload export ``name`` to dataset repo ``repo_id`` (created if missing); returns the plan.

    With ``dry_run`` nothing leaves the machine and no token is needed.
    """
    plan = plan_push(name, repo_id, private=private, dry_run=dry_run)
    if dry_run:
        return plan
    secret = hub_token(token)
    from huggingface_hub import HfApi

    api = HfApi(token=secret)
    try:
        api.create_repo(plan.repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=plan.repo_id,
            folder_path=str(plan.folder),
            repo_type=REPO_TYPE,
            allow_patterns=[path for path, _ in plan.files],  # exactly what the plan lists
            commit_message=f"TeachLab export {plan.folder.name}",
        )
    except Exception as exc:  # the hub client raises many types; all mean "push failed"
        raise JobError(
            f"Pushing {plan.folder.name} to {plan.repo_id} failed ({type(exc).__name__}: {exc}); "
            "check the token's write access and the network, then push again."
        ) from exc
    url = getattr(info, "commit_url", None) or str(info)
    return replace(plan, url=url)


def plan_summary(plan: PushPlan) -> str:
    head = "Would push" if plan.dry_run else "Pushed"
    lines = [
        f"{head} {len(plan.files)} files ({plan.total_bytes} bytes) to "
        f"{'private' if plan.private else 'public'} dataset `{plan.repo_id}`"
        + (f": {plan.url}" if plan.url else "."),
        *(f"- `{path}` ({size} bytes)" for path, size in plan.files),
    ]
    return "\n".join(lines)
