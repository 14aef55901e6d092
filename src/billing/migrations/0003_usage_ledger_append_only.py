"""The usage ledger is append-only: PostgreSQL refuses UPDATE and DELETE on its rows,
whatever code (or admin) tries. TRUNCATE (test database flushes) is a table-level
statement and is not affected."""

from django.db import migrations

FORWARD = """
CREATE FUNCTION billing_usage_entry_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'billing_usageentry is append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_usage_entry_append_only
    BEFORE UPDATE OR DELETE ON billing_usageentry
    FOR EACH ROW EXECUTE FUNCTION billing_usage_entry_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS billing_usage_entry_append_only ON billing_usageentry;
DROP FUNCTION IF EXISTS billing_usage_entry_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_seed_prices")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
