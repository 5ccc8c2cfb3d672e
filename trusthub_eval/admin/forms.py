"""The admin's forms."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from trusthub_eval.models import Policy


class ReevaluateForm(forms.Form):
    policy = forms.ModelChoiceField(
        queryset=Policy.objects.all(),
        required=False,
        empty_label=_("Each one's own policy"),
        label=_("Evaluate against"),
    )
