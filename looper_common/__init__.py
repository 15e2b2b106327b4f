"""The layer under the clients and the trainer: durable files and other small infrastructure they share."""
