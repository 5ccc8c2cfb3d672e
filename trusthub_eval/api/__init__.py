"""The REST API: profiles, policies and evaluations, and triggering re-evaluations."""
