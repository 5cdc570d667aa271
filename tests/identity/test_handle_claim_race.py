import threading

from django.db import connection

from identity.models import Identity, User
from identity.provisioning import identity_claim
from infrasim_site.errors import Conflict


def race(users, handle):
    barrier = threading.Barrier(len(users))
    outcomes = {}

    def claim(user):
        try:
            barrier.wait()
            identity_claim(actor=user, handle=handle)
            outcomes[user.pk] = "won"
        except Conflict as exc:
            outcomes[user.pk] = exc.code
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def test_users_racing_for_one_handle_get_exactly_one_winner(transactional_db):
    users = [User.objects.create_user(display_name=f"racer {i}", signup_state="active") for i in range(4)]
    for round_number in range(8):
        handle = f"prize-{round_number}"
        outcomes = race(users if round_number % 2 else users[:2], handle)
        assert sorted(outcomes.values()).count("won") == 1, outcomes
        assert set(outcomes.values()) <= {"won", "taken", "already_claimed"}
        winner = next(pk for pk, outcome in outcomes.items() if outcome == "won")
        assert Identity.objects.get(handle=handle).user_id == winner
        Identity.objects.filter(handle=handle).delete()


def test_case_and_look_alike_variants_race_to_one_winner(transactional_db):
    users = [User.objects.create_user(display_name=f"racer {i}", signup_state="active") for i in range(3)]
    variants = ["modern", "MODERN", "rnodern"]
    barrier = threading.Barrier(3)
    outcomes = []

    def claim(user, handle):
        try:
            barrier.wait()
            identity_claim(actor=user, handle=handle)
            outcomes.append("won")
        except Conflict as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=pair) for pair in zip(users, variants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert outcomes.count("won") == 1, outcomes
    assert Identity.objects.count() == 1
