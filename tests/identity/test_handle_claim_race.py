from identity.models import Identity, User
from identity.provisioning import identity_claim
from infrasim_site.errors import Conflict
from tests.concurrency import race


def claim_race(users, handles) -> dict:
    outcomes = race([lambda u=u, h=h: identity_claim(actor=u, handle=h) for u, h in zip(users, handles)])
    for outcome in outcomes:
        if isinstance(outcome, Exception) and not isinstance(outcome, Conflict):
            raise outcome
    return {u.pk: (o.code if isinstance(o, Conflict) else "won") for u, o in zip(users, outcomes)}


def test_users_racing_for_one_handle_get_exactly_one_winner(transactional_db):
    users = [User.objects.create_user(display_name=f"racer {i}", signup_state="active") for i in range(4)]
    for round_number in range(8):
        handle = f"prize-{round_number}"
        racers = users if round_number % 2 else users[:2]
        outcomes = claim_race(racers, [handle] * len(racers))
        assert sorted(outcomes.values()).count("won") == 1, outcomes
        assert set(outcomes.values()) <= {"won", "taken", "already_claimed"}
        winner = next(pk for pk, outcome in outcomes.items() if outcome == "won")
        assert Identity.objects.get(handle=handle).user_id == winner
        Identity.objects.filter(handle=handle).delete()


def test_case_and_look_alike_variants_race_to_one_winner(transactional_db):
    users = [User.objects.create_user(display_name=f"racer {i}", signup_state="active") for i in range(3)]
    outcomes = claim_race(users, ["modern", "MODERN", "rnodern"])
    assert list(outcomes.values()).count("won") == 1, outcomes
    assert Identity.objects.count() == 1
