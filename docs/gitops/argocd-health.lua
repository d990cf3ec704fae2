-- Argo CD health check of articlesite.io/ArticleSite.
-- Install under resource.customizations.health.articlesite.io_ArticleSite in argocd-cm
-- (docs/install.md, "GitOps health"). Written for Lua 5.1, which Argo CD's gopher-lua follows.
--
-- Healthy:     Ready=True for the current generation, and no problem in Degraded.
-- Progressing: the operator has not seen this generation yet, or is rolling it out.
-- Suspended:   spec.paused, or scaled to zero on purpose.
-- Degraded:    anything else, with the operator's reason and message.
local hs = {}
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

local function current(observed)
  return generation == nil or (observed ~= nil and observed >= generation)
end

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. c.message
  end
  return text
end

local status = obj.status
if status == nil or not current(status.observedGeneration) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  else
    hs.message = "Waiting for the operator to observe the site"
  end
  return hs
end

local conditions = {}
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type ~= nil and current(c.observedGeneration) then
      conditions[c.type] = c
    end
  end
end
local ready = conditions["Ready"]
local progressing = conditions["Progressing"]
local degraded = conditions["Degraded"]

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end
if progressing ~= nil and progressing.reason == "Paused" then
  hs.status = "Suspended"
  hs.message = describe(progressing)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if ready ~= nil and ready.reason == "ScaledToZero" and progressing ~= nil and progressing.status == "False" then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end
if ready == nil or (progressing ~= nil and progressing.status == "True") then
  hs.status = "Progressing"
  if progressing ~= nil and progressing.status == "True" then
    hs.message = describe(progressing)
  else
    hs.message = "Waiting for the Ready condition"
  end
  return hs
end
hs.status = "Degraded"
hs.message = describe(ready)
return hs
