"""WebSocket bridge: streams broker sessions to WebSocket clients (flask-sock), one SUB socket per client.

``python -m bridges.ws`` serves it (see bridges/ws/serve.py); ``create_app(config)`` builds the app.
"""
