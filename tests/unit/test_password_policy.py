import pytest

from currencyex.auth.domain import check_password_policy
from currencyex.kernel.errors import ValidationFailed


@pytest.mark.parametrize(
    "password",
    [
        "short1",  # too short
        "onlyletterslong",  # letters only
        "12345678901234",  # digits only
        "password1234",  # well known
        "alice-secret-99",  # contains the email's local part
        "a1" * 65,  # too long
    ],
)
def test_weak_passwords_are_refused_with_1000(password):
    with pytest.raises(ValidationFailed) as refused:
        check_password_policy(password, email="alice@example.com")
    assert refused.value.code == 1000
    assert refused.value.details


def test_a_reasonable_password_passes():
    check_password_policy("correct-horse-42", email="alice@example.com")
