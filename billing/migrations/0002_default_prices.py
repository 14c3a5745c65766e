from django.db import migrations


def load_default_prices(apps, schema_editor):
    from billing.default_prices import default_prices_load

    default_prices_load(
        model_class=apps.get_model("models_catalog", "FoundationModel"),
        price_class=apps.get_model("billing", "ModelPrice"),
    )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0001_initial"),
        ("models_catalog", "0002_load_catalogue"),
    ]

    operations = [migrations.RunPython(load_default_prices, migrations.RunPython.noop)]
