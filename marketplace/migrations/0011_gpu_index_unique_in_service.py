"""A GPU's index is unique among the node's GPUs in service, so a replacement can take a retired GPU's slot.

The GPU table has a row per GPU, so the unique index is rebuilt in place (milliseconds) rather
than concurrently.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0010_node_price_order'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='gpu',
            name='gpu_unique_index_per_node',
        ),
        migrations.AddConstraint(
            model_name='gpu',
            constraint=models.UniqueConstraint(condition=models.Q(('retired_at__isnull', True)), fields=('node', 'index'), name='gpu_unique_index_per_node'),
        ),
    ]
