from django.contrib import admin

from models_catalog.models import FoundationModel


@admin.register(FoundationModel)
class FoundationModelAdmin(admin.ModelAdmin):
    list_display = ["model_id", "name", "family", "context_window", "max_gen_len_cap", "is_active"]
    list_filter = ["family", "is_active"]
    search_fields = ["model_id", "name"]
    list_editable = ["is_active"]
