from django.db import migrations


def load_catalogue(apps, schema_editor):
    from models_catalog.services import catalogue_load

    catalogue_load(model_class=apps.get_model("models_catalog", "FoundationModel"))


class Migration(migrations.Migration):
    dependencies = [("models_catalog", "0001_initial")]

    operations = [migrations.RunPython(load_catalogue, migrations.RunPython.noop)]
