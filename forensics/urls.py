from django.urls import path

from forensics import views

urlpatterns = [
    path("forensics/card", views.forensics_card, name="card"),
]
