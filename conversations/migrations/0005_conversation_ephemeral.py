from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0004_tenant_require_end_user"),
    ]

    operations = [
        migrations.AddField(
            model_name="conversation",
            name="ephemeral",
            field=models.BooleanField(
                default=False,
                help_text="Holds one call of the OpenAI-compatible surface made without `conversation`: never listed or served to the tenant, purged once its answer is final and old.",
            ),
        ),
    ]
