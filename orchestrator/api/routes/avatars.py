"""/v1/avatars: upload a video to prepare once, inspect, list, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from orchestrator.api.deps import ServiceDep
from orchestrator.api.documents import avatar_document
from orchestrator.api.intake import video_check
from orchestrator.api.schemas import AvatarDocument, AvatarPage, error_responses
from orchestrator.api.uploads import receive_form
from orchestrator.errors import BadInput, NotFound
from orchestrator.jobs.store import PREPARING, AvatarRecord

router = APIRouter(prefix="/v1/avatars", tags=["avatars"])
STAGE = "avatars"


def _document(service: ServiceDep, avatar: AvatarRecord) -> AvatarDocument:
    if avatar.state == PREPARING:
        return avatar_document(avatar, service.avatars.frames_seen(avatar.id) or 0)
    return avatar_document(avatar)


@router.post(
    "",
    status_code=201,
    response_model=AvatarDocument,
    summary="Upload an avatar video (multipart field 'video'); preparation runs in the background",
    responses={
        200: {"model": AvatarDocument, "description": "the same video was uploaded before"},
        **error_responses(413, 422),
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["video"],
                        "properties": {"video": {"type": "string", "format": "binary"}},
                    }
                }
            },
            "required": True,
        }
    },
)
async def create_avatar(
    request: Request, response: Response, service: ServiceDep
) -> AvatarDocument:
    form = await receive_form(
        request,
        storage=service.storage,
        pool=service.io_pool,
        max_bytes=service.settings.max_upload_bytes,
        checks={"video": video_check(service)},
    )
    video = form.files.get("video")
    if video is None:
        raise BadInput("request", "the form needs a 'video' file")
    avatar, created = await service.avatars.register(video.content_id, video.path, video.filename)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/avatars/{avatar.id}"
    return _document(service, avatar)


@router.get("", response_model=AvatarPage, summary="All avatars, newest first")
async def list_avatars(service: ServiceDep) -> AvatarPage:
    return AvatarPage(items=[_document(service, a) for a in await service.store.list_avatars()])


@router.get(
    "/{avatar_id}",
    response_model=AvatarDocument,
    summary="State, frames, fps, resolution, frames with a face",
    responses=error_responses(404, 422),
)
async def get_avatar(avatar_id: str, service: ServiceDep) -> AvatarDocument:
    avatar = await service.store.get_avatar(avatar_id)
    if avatar is None:
        raise NotFound(STAGE, f"no avatar with id '{avatar_id}'")
    return _document(service, avatar)


@router.delete(
    "/{avatar_id}",
    status_code=204,
    response_class=Response,
    summary="Remove the avatar and its files (409 while a job uses it)",
    responses=error_responses(404, 409, 422),
)
async def delete_avatar(avatar_id: str, service: ServiceDep) -> Response:
    await service.avatars.delete(avatar_id)
    return Response(status_code=204)
