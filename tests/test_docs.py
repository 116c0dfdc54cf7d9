import importlib.util

from tests.helpers import REPO_ROOT


def test_api_reference_lists_every_public_name_and_is_up_to_date():
    spec = importlib.util.spec_from_file_location("make_api", REPO_ROOT / "docs" / "make_api.py")
    make_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_api)
    text, undocumented = make_api.render()
    assert undocumented == []
    assert (REPO_ROOT / "docs" / "api.md").read_text() == text, "run: python docs/make_api.py"
