"""The wire format: the records of the .NET backplane and of our fleet topic,
SignalR hub-protocol frames, which topic and key a target maps to,
recovery's offset strings. Pure functions over bytes; imports nothing of the
package but ``errors``.
"""
