"""``billing_budget_hold(budget, amount)``: the budget hold as one statement that raises
(SQLSTATE SYB01, DETAIL '<budget id>:<amount>') when the row has no room, so a hold can
travel with the COMMIT in one round trip and a refusal aborts the transaction
(kernel.writes, billing.services.budget_transaction; docs/decisions/submit-path.md).
Adding a function is safe while the previous release runs (it does not call it)."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION billing_budget_hold(budget bigint, amount numeric) RETURNS void AS $$
BEGIN
    UPDATE billing_budget
       SET reserved_usd = reserved_usd + amount, updated_at = statement_timestamp()
     WHERE id = budget AND limit_usd >= spent_usd + reserved_usd + amount;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'budget % has no room for % USD', budget, amount
            USING ERRCODE = 'SYB01', DETAIL = budget::text || ':' || amount::text;
    END IF;
END;
$$ LANGUAGE plpgsql;
"""

BACKWARD = "DROP FUNCTION IF EXISTS billing_budget_hold(bigint, numeric);"


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_usage_ledger_append_only")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
