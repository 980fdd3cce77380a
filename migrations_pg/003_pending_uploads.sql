-- 003_pending_uploads: an owner's uploads not yet attached, summed for the
-- cap on them (PARLEY_MAX_PENDING_UPLOADS) at every upload.
CREATE INDEX attachments_owner_pending ON attachments(owner_id) WHERE conv_id IS NULL;
