"""Record Twilio TrustHub compliance evaluations of Customer Profiles."""

__version__ = "0.1.0"
