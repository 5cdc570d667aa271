from django import forms

from identity.models import ApiToken


class ClaimHandleForm(forms.Form):
    handle = forms.CharField(
        max_length=256,
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}),
        help_text="3-32 characters: a-z, 0-9 and '-', starting with a letter.",
    )


class CreateTokenForm(forms.Form):
    name = forms.CharField(max_length=64)
    scope = forms.ChoiceField(
        choices=ApiToken.Scope.choices,
        initial=ApiToken.Scope.READ,
        help_text="Read-only tokens can only read. No token can manage passkeys or tokens.",
    )
    expires_at = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), help_text="Optional, UTC."
    )
