"""The process's services, built once from Settings and shared by the app, the CLI and the tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.metrics import CountedUsage
from gateway.ratelimit.limiter import Limiter
from serving.catalog import Catalog
from serving.pool import EnginePool
from serving.proxy import Completions
from serving.responses import ResponsesService
from serving.stored import StoredCompletionWriter
from storage import migrate
from storage.accounts import Accounts
from storage.blobs import BlobStore, make_blob_store
from storage.db import Database
from storage.engines import EngineRegistry
from storage.evals import EvalStore
from storage.exports import ExportStore
from storage.files import Files
from storage.jobs import JobStore
from storage.quotas import StorageQuota
from storage.responses import ResponseStore
from storage.settings import Settings
from storage.stored_completions import StoredCompletions
from storage.uploads import UploadStore
from storage.usage import UsageStore

log = logging.getLogger("tunegate")


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    accounts: Accounts
    files: Files
    catalog: Catalog
    jobs: JobStore
    usage: UsageStore
    engines: EnginePool
    completions: Completions
    evals: EvalStore
    exports: ExportStore
    limiter: Limiter
    quota: StorageQuota
    uploads: UploadStore
    stored_completions: StoredCompletions | None = None  # chat completions made with store: true (set by build)
    responses: ResponsesService | None = None  # /v1/responses over `completions` (set by build)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.resolved_database_url)
        blobs = make_blob_store(settings)  # blob_dir, or S3 (blob_url)
        catalog = Catalog(db, settings)
        usage = UsageStore(db)
        engines = EnginePool(settings, catalog, blobs, EngineRegistry(db))
        stored = StoredCompletions(db)
        completions = Completions(engines, CountedUsage(usage), StoredCompletionWriter(stored))
        # the CLI's or another local process's revocations reach the key cache through <data_dir>/key-revocations
        accounts = Accounts(db, settings.auth_cache_seconds, revocations=settings.data_dir / "key-revocations")
        limits = settings.limits
        quota = StorageQuota(db, blobs, limits)
        return cls(
            settings,
            db,
            blobs,
            accounts,
            Files(db, blobs, quota=quota.check),
            catalog,
            JobStore(db, limits.running_jobs),
            usage,
            engines,
            completions,
            EvalStore(db, limits.running_eval_runs),
            ExportStore(db, limits.running_exports),
            Limiter(settings, accounts),
            quota,
            UploadStore(db, blobs, settings.uploads),
            stored_completions=stored,
            responses=ResponsesService(completions, ResponseStore(db)),
        )

    def prepare(self) -> str | None:
        """Migrate the schema, register base models, tidy after crashes. Returns a newly generated admin key."""
        migrate.upgrade(self.db)
        self.catalog.sync_base_models()
        self.blobs.sweep_staging()
        self.files.reap_orphans()
        self.files.sweep_expired()
        self.uploads.sweep_expired()
        admin = self.settings.admin_key.get_secret_value() if self.settings.admin_key else None
        return self.accounts.ensure_admin_credential(admin)

    def close(self) -> None:
        self.db.dispose()
