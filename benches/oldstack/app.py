"""The stack Xibaar replaces: Celery workers on RabbitMQ with four priority queues, pushing
through the official Firebase Admin SDK (firebase-admin), as the utility deployed it.

Settings come from the environment, so that one module serves every configuration the
benchmark compares:

- OLDSTACK_BROKER: the RabbitMQ URL;
- OLDSTACK_FCM: the FCM stand-in's base URL (the SDK's FCM host is fixed; only it is pointed
  elsewhere, as in the stand-in's own SDK test);
- OLDSTACK_KEY: a service-account key whose token_uri is the stand-in's;
- OLDSTACK_ACKS_LATE: "1" acknowledges a task after it ran (Celery's default is before);
- OLDSTACK_PREFETCH: tasks a worker process reserves ahead (Celery's default is 4).
"""

import asyncio
import os

import firebase_admin
from celery import Celery
from celery.signals import worker_ready
from firebase_admin import credentials, exceptions, messaging
from kombu import Queue

QUEUES = ("urgent", "high", "normal", "low")

messaging._MessagingService.FCM_URL = os.environ["OLDSTACK_FCM"] + "/v1/projects/{0}/messages:send"

app = Celery("oldstack", broker=os.environ["OLDSTACK_BROKER"])
app.conf.update(
    task_queues=[Queue(name) for name in QUEUES],
    task_default_queue="normal",
    task_acks_late=os.environ.get("OLDSTACK_ACKS_LATE") == "1",
    worker_prefetch_multiplier=int(os.environ.get("OLDSTACK_PREFETCH", "4")),
    task_ignore_result=True,
    task_serializer="json",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_firebase = None


@worker_ready.connect
def _ready(**_):
    """Creates OLDSTACK_READY once the worker consumes: the benchmark measures from there."""
    path = os.environ.get("OLDSTACK_READY")
    if path:
        open(path, "w").close()


def firebase():
    """The SDK's app, made once per worker process (after a prefork worker forks)."""
    global _firebase
    if _firebase is None:
        _firebase = firebase_admin.initialize_app(
            credentials.Certificate(os.environ["OLDSTACK_KEY"])
        )
    return _firebase


def message(token, title, body, data):
    return messaging.Message(
        token=token,
        notification=messaging.Notification(title=title, body=body),
        data=data,
    )


@app.task(name="push")
def push(token, title, body, data):
    """One device, as the deployed stack sent it: an FCM error is logged and dropped."""
    try:
        return messaging.send(message(token, title, body, data), app=firebase())
    except exceptions.FirebaseError as e:
        print(f"push failed: {e.code}")
        return None


@app.task(name="push_batch")
def push_batch(tokens, title, body, data):
    """Up to 500 devices through send_each (a thread per message, HTTP/1.1 connections)."""
    messages = [message(t, title, body, data) for t in tokens]
    return messaging.send_each(messages, app=firebase()).success_count


_loop = None


@app.task(name="push_batch_async")
def push_batch_async(tokens, title, body, data):
    """Up to 500 devices through send_each_async (asyncio and httpx). The SDK keeps its httpx
    client, bound to the loop it first ran on: one loop per worker process serves every task."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    messages = [message(t, title, body, data) for t in tokens]
    batch = _loop.run_until_complete(messaging.send_each_async(messages, app=firebase()))
    return batch.success_count
