"""A Django admin change form's own POST data, as a browser would send it back."""

from __future__ import annotations

from typing import Any

from django.forms import CheckboxInput


def changeform_data(response: Any) -> dict[str, Any]:
    """What a browser would POST back, unchanged, from an admin change page (main form and
    every inline formset), so a test can change one field and submit."""
    data: dict[str, Any] = {}
    _add_form(data, response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        _add_form(data, inline.formset.management_form)
        for form in inline.formset.forms:
            _add_form(data, form)
    return data


def _add_form(data: dict[str, Any], form: Any) -> None:
    for name, field in form.fields.items():
        bound = form[name]
        value = bound.value()
        if isinstance(field.widget, CheckboxInput):
            if field.widget.check_test(value):
                data[bound.html_name] = "on"
        elif value is not None:
            data[bound.html_name] = str(value)


def add_inline_row(data: dict[str, Any], prefix: str, **fields: Any) -> None:
    """Fill one more row of an inline formset, as "Add another" does."""
    index = int(data[f"{prefix}-TOTAL_FORMS"])
    data[f"{prefix}-TOTAL_FORMS"] = str(index + 1)
    for name, value in fields.items():
        if value is True:
            data[f"{prefix}-{index}-{name}"] = "on"
        elif value not in (False, None):
            data[f"{prefix}-{index}-{name}"] = str(value)
