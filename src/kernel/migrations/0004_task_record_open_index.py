# The index of open task records, built without locking writes (CREATE INDEX
# CONCURRENTLY cannot run in a transaction, hence atomic = False). docs/migrations.md

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('kernel', '0003_task_record'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='taskrecord',
            index=models.Index(condition=models.Q(('status__in', ['READY', 'RUNNING'])), fields=['status', 'enqueued_at'], name='task_record_open'),
        ),
    ]
