def pytest_configure(config):
    config.addinivalue_line("markers", "hostile: grades the hostile corpus (tests/hostile) in one real run")
