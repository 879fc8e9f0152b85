from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0008_task_delivery'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='node',
            index=models.Index(fields=['gpu_model', 'status', 'gpu_count', 'cpu_millicores', 'price_per_gpu_hour', 'id'], name='node_model_free_order'),
        ),
    ]
