from django.urls import path

from appliances import views

urlpatterns = [
    path("appliances/card", views.appliances_card, name="card"),
    path("appliances/<int:pk>/console", views.appliance_console, name="console"),
]
