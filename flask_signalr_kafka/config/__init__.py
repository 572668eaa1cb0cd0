"""What a user configures: argument checks with messages that say what to do,
and Heroku's Kafka config vars turned into client and topic settings.
"""
