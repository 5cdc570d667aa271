from django.urls import path

from identity import views

urlpatterns = [
    path("signin/", views.signin, name="signin"),
    path("signup/", views.signup, name="signup"),
    path("signout/", views.signout, name="signout"),
    path("enroll/<str:token>/", views.enroll, name="enroll"),
    path("passkeys/", views.passkeys, name="passkeys"),
    path("passkeys/<int:pk>/rename", views.passkey_rename, name="passkey-rename"),
    path("passkeys/<int:pk>/delete", views.passkey_delete, name="passkey-delete"),
    path("sessions/end-others", views.sessions_end_others, name="sessions-end-others"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke", views.token_revoke, name="token-revoke"),
    path("identity/card", views.identity_card, name="identity-card"),
    path("identity/claim", views.identity_claim, name="identity-claim"),
    path("identity/provision", views.identity_provision, name="identity-provision"),
    path("identity/cancel", views.identity_cancel, name="identity-cancel"),
    path("identity/availability", views.identity_availability, name="identity-availability"),
]
