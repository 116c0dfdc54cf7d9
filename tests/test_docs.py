import importlib.util

from tests.helpers import REPO_ROOT


def test_api_reference_lists_every_public_name_and_is_up_to_date():
    spec = importlib.util.spec_from_file_location("make_api", REPO_ROOT / "docs" / "make_api.py")
    make_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_api)
    text, undocumented = make_api.render()
    assert undocumented == []
    assert (REPO_ROOT / "docs" / "api.md").read_text() == text, "run: python docs/make_api.py"


def test_the_readme_dict_output_example_runs_as_pasted(capsys):
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("<!-- readme-example: dict outputs -->", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("['digit', 'size'] [")
    assert "'digit_accuracy'" in printed and "'size_mae'" in printed
