"""Evals, their runs and output items. Every read filters on the organization; runs are claimed under a lease."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from storage.db import Database
from storage.errors import InvalidRequest, NotFound
from storage.files import Page, keyset_page
from storage.leases import OrgCap, claim_oldest, fence, held_update, renew
from storage.tables import Eval, EvalOutputItem, EvalRun

ACTIVE = ("queued", "in_progress")


class EvalStore:
    def __init__(self, db: Database, running_cap: int | None = None) -> None:
        self.db = db
        self.cap = OrgCap("running_eval_runs", running_cap)  # per organization; its override wins

    # --- evals -------------------------------------------------------------------------------------------
    def add(self, row: Eval | EvalRun) -> None:
        with self.db.session() as s:
            s.add(row)

    def get_eval(self, org_id: str, eval_id: str) -> Eval:
        with self.db.session() as s:
            return _eval(s, org_id, eval_id)

    def list_evals(self, org_id: str, *, limit: int, after: str | None, ascending: bool) -> Page[Eval]:
        return self._page(Eval, [Eval.organization_id == org_id], limit, after, ascending)

    def update_eval(self, org_id: str, eval_id: str, values: dict[str, Any]) -> Eval:
        with self.db.session() as s:
            row = _eval(s, org_id, eval_id)
            for key, value in values.items():
                setattr(row, key, value)
            s.add(row)
            s.flush()
            s.refresh(row)
            return row

    def delete_eval(self, org_id: str, eval_id: str) -> None:
        with self.db.session() as s:
            row = _eval(s, org_id, eval_id)
            s.exec(delete(EvalOutputItem).where(col(EvalOutputItem.eval_id) == eval_id))
            s.exec(delete(EvalRun).where(col(EvalRun.eval_id) == eval_id))
            s.delete(row)

    # --- runs --------------------------------------------------------------------------------------------
    def get_run(self, org_id: str | None, eval_id: str | None, run_id: str) -> EvalRun:
        with self.db.session() as s:
            query = select(EvalRun).where(EvalRun.id == run_id)
            if org_id is not None:
                query = query.where(EvalRun.organization_id == org_id)
            if eval_id is not None:
                query = query.where(EvalRun.eval_id == eval_id)
            row = s.exec(query).first()
        if row is None:
            raise NotFound(f"No eval run found with id '{run_id}'.", param="run_id", code="run_not_found")
        return row

    def list_runs(
        self, org_id: str, eval_id: str, *, limit: int, after: str | None, ascending: bool, status: str | None
    ) -> Page[EvalRun]:
        self.get_eval(org_id, eval_id)
        where = [EvalRun.organization_id == org_id, EvalRun.eval_id == eval_id]
        if status:
            where.append(EvalRun.status == status)
        return self._page(EvalRun, where, limit, after, ascending)

    def cancel_run(self, org_id: str, eval_id: str, run_id: str) -> EvalRun:
        run = self.get_run(org_id, eval_id, run_id)
        if run.status not in ACTIVE:
            raise InvalidRequest(
                f"Eval run {run_id} is {run.status} and can no longer be canceled.",
                param="run_id",
                code="invalid_run_state",
            )
        self.finish(run_id, None, status="canceled")
        return self.get_run(org_id, eval_id, run_id)

    def delete_run(self, org_id: str, eval_id: str, run_id: str) -> None:
        self.get_run(org_id, eval_id, run_id)
        with self.db.session() as s:
            s.exec(delete(EvalOutputItem).where(col(EvalOutputItem.run_id) == run_id))
            s.exec(delete(EvalRun).where(col(EvalRun.id) == run_id))

    def claim(self, worker: str, lease_s: float) -> EvalRun | None:
        """A queued run, or one in progress whose worker stopped renewing its lease."""
        t = time.time()
        run_id = claim_oldest(
            self.db,
            EvalRun,
            col(EvalRun.status).in_(ACTIVE),
            t,
            self.cap,
            lease_owner=worker,
            lease_expires_at=t + lease_s,
            status="in_progress",
        )
        return self.get_run(None, None, run_id) if run_id else None

    def heartbeat(self, run_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease; False when the run was canceled, deleted or taken over."""
        return renew(self.db, EvalRun, run_id, worker, lease_s, EvalRun.status == "in_progress")

    def progress(self, run_id: str, worker: str, **values: Any) -> None:
        with self.db.session() as s:
            held_update(s, EvalRun, run_id, worker, EvalRun.status == "in_progress", **values)

    def finish(self, run_id: str, worker: str | None, **values: Any) -> bool:
        """End a run (completed / failed / canceled) and drop its lease; a worker only ends its own run."""
        with self.db.session() as s:
            return held_update(
                s,
                EvalRun,
                run_id,
                worker,
                col(EvalRun.status).in_(ACTIVE),
                lease_owner=None,
                lease_expires_at=None,
                **values,
            )

    # --- output items ------------------------------------------------------------------------------------
    def add_items(self, items: list[EvalOutputItem], lease: str | None = None) -> None:
        """Store a batch's items; with ``lease`` (the claim's token) only while that claim holds the run, so a
        worker whose run was taken over stores nothing more (and (run, item) is unique besides)."""
        with self.db.session() as s:
            if lease is not None and items:
                fence(s, EvalRun, items[0].run_id, lease)
            s.add_all(items)

    def done_ids(self, run_id: str) -> list[int]:
        """The data-source indices a run has stored items for (one light column)."""
        with self.db.session() as s:
            return list(s.exec(select(EvalOutputItem.datasource_item_id).where(EvalOutputItem.run_id == run_id)).all())

    def items(self, run_id: str) -> list[EvalOutputItem]:
        with self.db.session() as s:
            return list(
                s.exec(
                    select(EvalOutputItem)
                    .where(EvalOutputItem.run_id == run_id)
                    .order_by(col(EvalOutputItem.datasource_item_id))
                ).all()
            )

    def list_items(
        self,
        org_id: str,
        eval_id: str,
        run_id: str,
        *,
        limit: int,
        after: str | None,
        ascending: bool,
        status: str | None,
    ) -> Page[EvalOutputItem]:
        self.get_run(org_id, eval_id, run_id)
        where = [EvalOutputItem.run_id == run_id]
        if status:
            where.append(EvalOutputItem.status == status)
        return self._page(EvalOutputItem, where, limit, after, ascending)

    def get_item(self, org_id: str, eval_id: str, run_id: str, item_id: str) -> EvalOutputItem:
        self.get_run(org_id, eval_id, run_id)
        with self.db.session() as s:
            row = s.exec(
                select(EvalOutputItem).where(EvalOutputItem.run_id == run_id, EvalOutputItem.id == item_id)
            ).first()
        if row is None:
            raise NotFound(f"No output item found with id '{item_id}'.", param="output_item_id")
        return row

    def _page(self, table: type, where: list, limit: int, after: str | None, ascending: bool) -> Page:
        with self.db.session() as s:
            return keyset_page(
                s,
                table,
                where,
                limit=limit,
                after=after,
                ascending=ascending,
                missing=lambda after: NotFound(f"No such object: {after}", param="after"),
            )


def _eval(s: Session, org_id: str, eval_id: str) -> Eval:
    row = s.exec(select(Eval).where(Eval.id == eval_id, Eval.organization_id == org_id)).first()
    if row is None:
        raise NotFound(f"No eval found with id '{eval_id}'.", param="eval_id", code="eval_not_found")
    return row
