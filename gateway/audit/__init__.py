"""The audit trail: the record, its writer, queries over it, incident reports, live detection."""

from .record import Exchange, audit_record
from .writer import AuditWriter

__all__ = ["AuditWriter", "Exchange", "audit_record"]
