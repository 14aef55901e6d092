"""Seed the price catalog with the launch prices (``billing.catalog``, pure data)."""

from decimal import Decimal

from django.db import migrations

from billing.catalog import DEFAULT_PRICES, VALID_FROM


def seed(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    for row in DEFAULT_PRICES:
        Price.objects.get_or_create(
            model=row.model,
            valid_from=VALID_FROM,
            defaults={
                "provider": row.provider,
                "input_usd_per_mtok": Decimal(row.input_usd_per_mtok),
                "output_usd_per_mtok": Decimal(row.output_usd_per_mtok),
            },
        )


def unseed(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    Price.objects.filter(model__in=[row.model for row in DEFAULT_PRICES], valid_from=VALID_FROM).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
