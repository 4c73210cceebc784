"""experiments: arms compared on tasks and seeds, per-item results, costs; arm rounds

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:50:42.172454
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("estimate", sa.JSON(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experiment_name"), ["name"], unique=True)

    op.create_table(
        "cost",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("arm", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("task", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("tokens_generated", sa.Integer(), nullable=False),
        sa.Column("tokens_scored", sa.Integer(), nullable=False),
        sa.Column("peak_rss_mb", sa.Float(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiment.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("cost", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cost_experiment_id"), ["experiment_id"], unique=False)

    op.create_table(
        "itemresult",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("arm", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("task", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("mode", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("shots", sa.Integer(), nullable=False),
        sa.Column("item", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("predicted", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiment.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("experiment_id", "arm", "task", "seed", "mode", "shots", "item"),
    )
    with op.batch_alter_table("itemresult", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_itemresult_experiment_id"), ["experiment_id"], unique=False
        )

    with op.batch_alter_table("round", schema=None) as batch_op:
        batch_op.add_column(sa.Column("arm", sqlmodel.sql.sqltypes.AutoString(), nullable=True))

    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_study_experiment_id"), ["experiment_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_study_experiment", "experiment", ["experiment_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_constraint("fk_study_experiment", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_study_experiment_id"))
        batch_op.drop_column("experiment_id")

    with op.batch_alter_table("round", schema=None) as batch_op:
        batch_op.drop_column("arm")

    with op.batch_alter_table("itemresult", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_itemresult_experiment_id"))

    op.drop_table("itemresult")
    with op.batch_alter_table("cost", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cost_experiment_id"))

    op.drop_table("cost")
    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiment_name"))

    op.drop_table("experiment")
