from django import forms


class ClaimHandleForm(forms.Form):
    handle = forms.CharField(
        max_length=256,
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}),
        help_text="3-32 characters: a-z, 0-9 and '-', starting with a letter.",
    )


class RenameForm(forms.Form):
    name = forms.CharField(max_length=64)


class CreateTokenForm(forms.Form):
    name = forms.CharField(max_length=64)
    expires_at = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), help_text="Optional, UTC."
    )
