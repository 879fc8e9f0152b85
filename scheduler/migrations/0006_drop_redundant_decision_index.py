"""Drop the decision's foreign key index: ``decision_reservation_at`` leads with the same column."""

from django.db import migrations, models
import django.db.models.deletion

from marketplace.online_indexes import redundant_index_drops

drop, rebuild = redundant_index_drops(
    {"scheduler_decision_reservation_id_161ac593": ("scheduler_decision", "reservation_id")})


class Migration(migrations.Migration):

    atomic = False  # PostgreSQL drops an index concurrently only outside a transaction.

    dependencies = [
        ("allocation", "0026_drop_redundant_foreign_key_indexes"),
        ("scheduler", "0005_decision_permissions"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop, rebuild)],
            state_operations=[
                migrations.AlterField(
                    model_name="decision", name="reservation",
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                            related_name="decisions", to="allocation.reservation"),
                ),
            ],
        ),
    ]
