from django.urls import path

from mesh import views

urlpatterns = [
    path("mesh/card", views.mesh_card, name="card"),
    path("mesh/peers/<int:pk>/revoke", views.peer_revoke, name="peer-revoke"),
]
