from __future__ import annotations

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from models_catalog.catalogue import BEDROCK_MAX_GEN_LEN


class PromptFamily(models.TextChoices):
    LLAMA2 = "llama2", "Llama 2 ([INST] format)"
    LLAMA3 = "llama3", "Llama 3.x (header format)"


class FoundationModel(models.Model):
    """One Bedrock Meta model and the limits we enforce for it."""

    model_id = models.CharField(
        max_length=100, unique=True, help_text="Bedrock model id, e.g. meta.llama3-8b-instruct-v1:0"
    )
    name = models.CharField(max_length=100)
    family = models.CharField(max_length=16, choices=PromptFamily.choices)
    context_window = models.PositiveIntegerField(help_text="Prompt plus generation, in tokens.")
    max_gen_len_cap = models.PositiveIntegerField(
        default=BEDROCK_MAX_GEN_LEN,
        validators=[MinValueValidator(1), MaxValueValidator(BEDROCK_MAX_GEN_LEN)],
    )
    default_max_gen_len = models.PositiveIntegerField(default=512)
    default_temperature = models.DecimalField(
        max_digits=3, decimal_places=2, default=Decimal("0.50")
    )
    default_top_p = models.DecimalField(max_digits=3, decimal_places=2, default=Decimal("0.90"))
    accepts_images = models.BooleanField(
        default=False, help_text="Bedrock accepts images for it; this service sends text only."
    )
    is_active = models.BooleanField(default=True)
    sort_order = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sort_order", "model_id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(default_max_gen_len__lte=models.F("max_gen_len_cap")),
                name="default_max_gen_len_within_cap",
            ),
            models.CheckConstraint(
                condition=models.Q(max_gen_len_cap__lt=models.F("context_window")),
                name="max_gen_len_cap_below_context_window",
            ),
        ]

    def __str__(self) -> str:
        return self.model_id
