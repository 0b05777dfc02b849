-- Argo CD health check for ringwarden.dev/v1alpha1 ProbeSet and ClusterProbeSet,
-- whose statuses are the same: register it for both kinds.
-- Reads what the ringwarden operator writes to the status: observedGeneration,
-- the conditions Ready, Invalid, QuotaConstrained and Degraded, and `ready`
-- (nodes running every probe / nodes selected). See docs/gitops.md.
local hs = {}
local resource = obj.kind or "ProbeSet"

local function condition(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function holds(c)
  return c ~= nil and c.status == "True"
end

local function says(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to plan the " .. resource
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to plan the latest spec"
  return hs
end

local invalid = condition(status.conditions, "Invalid")
if holds(invalid) then
  hs.status = "Degraded"
  hs.message = says(invalid)
  return hs
end
local degraded = condition(status.conditions, "Degraded")
if holds(degraded) then
  hs.status = "Degraded"
  hs.message = says(degraded)
  return hs
end
local ready = condition(status.conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to plan the " .. resource
  return hs
end
if ready.status ~= "True" then
  -- NoMatchingNodes: valid, but no node has the labels of spec.nodeSelector
  -- yet; the probes start when one joins.
  if ready.reason == "NoMatchingNodes" then
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
  hs.message = says(ready)
  return hs
end

-- Planned. The Degraded condition and `ready` appear with the agents'
-- first reports.
if degraded == nil or status.ready == nil then
  hs.status = "Progressing"
  hs.message = "Planned; waiting for the agents' first reports"
  return hs
end
local running, selected = string.match(status.ready, "^(%d+)/(%d+)$")
hs.message = status.ready .. " nodes run every probe"
if running == nil or running ~= selected or selected == "0" then
  hs.status = "Progressing"
  return hs
end
hs.status = "Healthy"
local quota = condition(status.conditions, "QuotaConstrained")
if holds(quota) then
  hs.message = hs.message .. "; QuotaConstrained: " .. (quota.message or "")
end
return hs
