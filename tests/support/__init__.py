"""Helpers shared by the tests: producing, running, reading back; no test lives here."""
