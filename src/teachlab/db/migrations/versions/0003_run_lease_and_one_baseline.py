"""run lease generation; one zero-shot baseline row per round, probe and mode

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease", sa.Integer(), nullable=False, server_default="0"))
    # Older databases may hold a baseline stored twice (two runs scoring one round at once):
    # keep the first row of each (round, probe, mode) before the index forbids more.
    op.execute(
        "DELETE FROM proberesult WHERE draft_id IS NULL AND id NOT IN ("
        " SELECT MIN(id) FROM proberesult WHERE draft_id IS NULL"
        " GROUP BY round_id, probe_index, mode)"
    )
    with op.batch_alter_table("proberesult", schema=None) as batch_op:
        batch_op.create_index(
            "ux_proberesult_baseline",
            ["round_id", "probe_index", "mode"],
            unique=True,
            sqlite_where=sa.text("draft_id IS NULL"),
            postgresql_where=sa.text("draft_id IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("proberesult", schema=None) as batch_op:
        batch_op.drop_index("ux_proberesult_baseline")
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_column("lease")
