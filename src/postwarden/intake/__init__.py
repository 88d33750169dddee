"""Intake: validate what the API (and SMTP submission) hands over and store it in one go."""
